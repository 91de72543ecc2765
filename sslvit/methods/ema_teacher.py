"""The EMA teacher that the self-distillation methods (DINO, iBOT, DINOv2) compose."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

from sslvit.utils.schedules import cosine_schedule


class EMATeacher(nn.ModuleDict):
    """A frozen copy of the student's networks that follows them by an exponential moving average.

    ``theta_t <- m theta_t + (1 - m) theta_s`` once per *optimizer* step (correct under gradient
    accumulation), with ``m`` following a cosine from ``momentum`` to ``momentum_end`` over training
    (Caron et al., 2021, arXiv:2104.14294, section 3.1). The teacher takes no gradient and is always in
    eval mode (no dropout / drop path). A ``ModuleDict`` with the student's keys, so checkpoints hold
    ``teacher.backbone.*`` next to ``student.backbone.*``.

    Args:
        student: the student's networks, copied as they are now (build the teacher after the heads).
        momentum: EMA momentum at the first step (DINO 0.996).
        momentum_end: EMA momentum at the last step (1.0).
    """

    def __init__(self, student: nn.ModuleDict, momentum: float = 0.996, momentum_end: float = 1.0) -> None:
        super().__init__({name: copy.deepcopy(network) for name, network in student.items()})
        self.requires_grad_(False)
        self.eval()
        self.momentum_start = momentum
        self.momentum_end = momentum_end

    def train(self, mode: bool = True) -> EMATeacher:
        return super().train(False)  # no dropout / drop path in the teacher, ever

    def momentum(self, step: int, total_steps: int) -> float:
        """The EMA momentum at optimizer step ``step`` (0-based) of ``total_steps``."""
        return cosine_schedule(step, total_steps, self.momentum_start, self.momentum_end)

    @torch.no_grad()
    def ema_update(
        self,
        student: nn.ModuleDict,
        momentum: float,
        applied: torch.Tensor | None = None,
        sharded_root: nn.Module | None = None,
    ) -> None:
        """Move every teacher parameter towards the student's by ``1 - momentum``.

        Args:
            student: the networks this teacher was copied from.
            momentum: ``m`` of this step.
            applied: the step guard's 0-d device tensor, 0.0 after a skipped optimizer step (the teacher
                then stays as it was, decided on the device) or None when no step was guarded.
            sharded_root: the FSDP root module when training under FSDP, else None. A parameter inside
                its own FSDP unit (a transformer block, a head: units laid out alike in student and
                teacher) is a slice of that unit's flat parameter at the same offset on both sides, so
                the average runs shard to shard with no communication. Whatever the wrap policy left in
                the root unit (student and teacher embeddings side by side in one flat parameter, at
                different offsets) is gathered for the update and written back.

        Raises:
            ValueError: a teacher parameter without a student counterpart of the same shape (the two
                are sharded differently: the update would mix unrelated values).
        """
        gathered = (
            FullyShardedDataParallel.summon_full_params(sharded_root, recurse=False, writeback=True)
            if sharded_root is not None
            else contextlib.nullcontext()
        )
        with gathered:
            students = dict(student.named_parameters())
            pairs = [(name, t, students.get(name)) for name, t in self.named_parameters()]
            for name, t, s in pairs:
                if s is None or s.shape != t.shape:
                    found = "missing" if s is None else tuple(s.shape)
                    raise ValueError(
                        f"EMA teacher parameter {name!r} {tuple(t.shape)} has no student counterpart of "
                        f"the same shape ({found}): under FSDP pass the root module as sharded_root"
                    )
            teacher: list[torch.Tensor] = [t for _, t, _ in pairs]
            targets: list[torch.Tensor] = [s.detach() for _, _, s in pairs]  # type: ignore[union-attr]
            if applied is None:
                torch._foreach_lerp_(teacher, targets, 1.0 - momentum)
            else:  # weight 0 after a skipped step (the same arithmetic otherwise)
                weights = [applied * (1.0 - momentum)] * len(teacher)  # 0-d tensors: the `.List` overload
                torch._foreach_lerp_(teacher, targets, weights)  # type: ignore[arg-type]
