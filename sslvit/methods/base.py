"""The one base LightningModule of the teacher–student methods (DINO, iBOT, DINOv2)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from sslvit.methods.optim_config import OptimConfig, apply_lr_wd
from sslvit.methods.step_guard import NonFiniteStepGuard
from sslvit.methods.sync_free_logging import SyncFreeLogging
from sslvit.utils.distributed import mean_over_processes
from sslvit.utils.epoch_length import optimizer_steps_per_epoch
from sslvit.utils.fsdp import unwrapped_name
from sslvit.utils.param_groups import param_groups
from sslvit.utils.schedules import cosine_schedule, linear_warmup


class TeacherStudentModule(SyncFreeLogging):
    """Student networks, an EMA teacher, step-based schedules, parameter groups and clipping.

    A leaf method adds its heads to ``self.student`` (a ``ModuleDict`` that already holds ``backbone``),
    then calls :meth:`build_teacher`, and writes ``training_step``. Everything that every method needs
    lives here, so the leaves read like their papers.

    * The teacher is a frozen copy of the student updated after every *optimizer* step with
      ``theta_t <- m theta_t + (1 - m) theta_s`` (correct under gradient accumulation), m following a
      cosine from ``momentum_teacher`` to ``momentum_teacher_end``. It always stays in eval mode.
      Methods whose teacher is a fixed pretrained network (BEiT's tokenizer) call
      :meth:`set_frozen_teacher` instead: no EMA, no momentum schedule.
    * lr, weight decay and momentum are pure functions of ``trainer.global_step`` (exact resume).
    * ``forward(images)`` returns the teacher backbone's CLS features: what evaluation reads.

    Args:
        backbone: the student backbone (a ``MaskedViT``); the teacher gets a deep copy.
        optim: optimiser and schedule settings.
        momentum_teacher: EMA momentum at the first step (DINO 0.996).
        momentum_teacher_end: EMA momentum at the last step (1.0).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        momentum_teacher: float = 0.996,
        momentum_teacher_end: float = 1.0,
    ) -> None:
        super().__init__()
        self.student = nn.ModuleDict({"backbone": backbone})
        self.teacher: nn.ModuleDict | None = None
        self.optim = optim
        self.momentum_teacher = momentum_teacher
        self.momentum_teacher_end = momentum_teacher_end
        self.ema_teacher = True
        self.embed_dim: int = int(backbone.embed_dim)  # type: ignore[arg-type]
        # Clips the gradients and skips, on the device, a step whose gradients are not finite.
        self.step_guard = NonFiniteStepGuard()

    # ----------------------------------------------------------------------------------- teacher
    def build_teacher(self) -> None:
        """Create the teacher as a frozen copy of the (complete) student. Call at the end of __init__."""
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def set_frozen_teacher(self, **networks: nn.Module) -> None:
        """Use fixed pretrained networks (e.g. ``tokenizer=``) as the teacher: frozen, never EMA-updated."""
        self.teacher = nn.ModuleDict(networks)
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.ema_teacher = False

    def train(self, mode: bool = True) -> TeacherStudentModule:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # no dropout / drop path in the teacher, ever
        return self

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """theta_t <- m theta_t + (1 - m) theta_s for every teacher parameter (EMA teachers only); not
        at all after a step the :class:`NonFiniteStepGuard` skipped."""
        assert self.teacher is not None
        if not self.ema_teacher:
            return
        student = dict(self.student.named_parameters())
        pairs = [(t, student[name].detach()) for name, t in self.teacher.named_parameters()]
        teacher: list[torch.Tensor] = [t for t, _ in pairs]
        students: list[torch.Tensor] = [s for _, s in pairs]
        applied = self.step_guard.applied
        if applied is None:
            torch._foreach_lerp_(teacher, students, 1.0 - momentum)
        else:  # weight 0 after a skipped step, decided on the device (the same arithmetic otherwise)
            weights = [applied * (1.0 - momentum)] * len(teacher)  # 0-d tensors: the `.List` overload
            torch._foreach_lerp_(teacher, students, weights)  # type: ignore[arg-type]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) images -> (B,D) teacher CLS features (evaluation features)."""
        assert self.teacher is not None
        return self.teacher["backbone"](images)

    # --------------------------------------------------------------------------------- schedules
    @property
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    @property
    def steps_per_epoch(self) -> float:
        return optimizer_steps_per_epoch(self.trainer, self.total_steps)

    def epochs_to_steps(self, epochs: float) -> int:
        return round(epochs * self.steps_per_epoch)

    def warmup_over_epochs(self, start: float, end: float, epochs: float) -> float:
        """A value ramped linearly from ``start`` to ``end`` over ``epochs``, at the current step."""
        return linear_warmup(self.trainer.global_step, self.epochs_to_steps(epochs), start, end)

    @property
    def global_batch_size(self) -> int:
        trainer = self.trainer
        return self.optim.batch_size_per_device * trainer.world_size * trainer.accumulate_grad_batches

    def schedule_values(self, step: int) -> dict[str, float]:
        """Every schedule of the base at optimizer step ``step`` (0-based)."""
        o, total = self.optim, self.total_steps
        values = {
            "lr": cosine_schedule(
                step,
                total,
                o.scaled_lr(self.global_batch_size),
                o.min_lr,
                self.epochs_to_steps(o.warmup_epochs),
            ),
            "wd": cosine_schedule(step, total, o.weight_decay, o.weight_decay_end),
        }
        if self.ema_teacher:
            values["momentum"] = cosine_schedule(
                step, total, self.momentum_teacher, self.momentum_teacher_end
            )
        return values

    # ------------------------------------------------------------------------ data parallelism
    #: Trainable parameters this method never uses in a training step (full names, e.g. DINO's
    #: ``student.backbone.mask_token``: it sees no masked crops). They stay in the state dict, for
    #: evaluation, ``init_from`` and checkpoints, but DDP does not reduce them: a parameter DDP waits for
    #: in vain fails the second step (or forces ``find_unused_parameters``, a graph walk every step).
    unused_parameters: tuple[str, ...] = ()

    def hide_unused_parameters_from_ddp(self) -> None:
        """Tell DDP (read when it wraps this module) to skip :attr:`unused_parameters`."""
        names = dict(self.named_parameters())
        missing = [name for name in self.unused_parameters if name not in names]
        if missing:
            raise ValueError(f"{type(self).__name__}.unused_parameters names no parameter: {missing}")
        self._ddp_params_and_buffers_to_ignore = list(self.unused_parameters)

    # --------------------------------------------------------------------------------- optimizer
    def setup(self, stage: str) -> None:
        # Lightning calls setup before the strategy wraps the module in DDP.
        self.hide_unused_parameters_from_ddp()
        # FSDP turns every parameter into a 1-d shard (and renames it) before configure_optimizers
        # runs; remember the true dimensions now so weight decay still skips only biases and norms.
        self._param_ndim = {unwrapped_name(n): p.ndim for n, p in self.student.named_parameters()}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases, norms (all 1-d parameters), position embedding and the CLS / register / mask tokens."""
        name = unwrapped_name(name)
        if getattr(self, "_param_ndim", {}).get(name, param.ndim) <= 1:
            return True
        backbone: Any = self.student["backbone"]
        exempt = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
        return name.startswith("backbone.") and name.removeprefix("backbone.") in exempt

    def layer_id(self, name: str) -> int:
        backbone: Any = self.student["backbone"]
        name = unwrapped_name(name)
        if name.startswith("backbone."):
            return int(backbone.layer_id(name.removeprefix("backbone.")))
        return len(backbone.blocks) + 1  # heads sit above the last block

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = param_groups(
            self.student.named_parameters(),
            no_weight_decay=self.no_weight_decay,
            layer_id=self.layer_id,
            num_layers=len(self.student["backbone"].blocks),  # type: ignore[arg-type]
            layer_decay=self.optim.layer_decay,
            patch_embed_lr_mult=self.optim.patch_embed_lr_mult,
        )
        return self.optim.adamw(groups)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen for the first ``freeze_last_layer_epochs``; leaves list their prototypes."""
        return []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Freezing the prototypes for the first epoch(s) helps DINO avoid early collapse (paper, appendix).
        if self.trainer.global_step < self.epochs_to_steps(self.optim.freeze_last_layer_epochs):
            for p in self.last_layer_parameters():
                p.grad = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | int | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Measured even with clip_grad = 0: a non-finite norm has the step skipped (on the device).
        sharded = isinstance(self.trainer.strategy, FSDPStrategy)
        networks = {f"student.{name}": net for name, net in self.student.items()}
        norm = self.step_guard(
            optimizer, networks, self.optim.clip_grad, self.optim.clip_grad_mode, sharded=sharded
        )
        if norm is not None:  # the norm of all gradients before clipping, whatever the groups (a tensor)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
            assert self.step_guard.skipped is not None
            self.log("train/skipped_steps", self.step_guard.skipped.float(), on_step=True, on_epoch=False)

    def apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Write the lr / weight decay of optimizer step ``step`` into every group; return all values."""
        values = self.schedule_values(step)
        apply_lr_wd(optimizer, values["lr"], values["wd"])
        return values

    def after_optimizer_step(self, values: dict[str, float]) -> None:
        """EMA teacher update and schedule logging, once per optimizer step (``values`` from above)."""
        if "momentum" in values:  # EMA teachers only
            self.update_teacher(values["momentum"])
        self.log_dict({f"sched/{k}": v for k, v in values.items()}, on_step=True, on_epoch=False)

    # The per-step pieces above are separate methods so that benchmarks/step.py can drive the very same
    # step without Lightning's loop.
    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        values = self.apply_schedules(optimizer, self.trainer.global_step)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Once per optimizer step, whatever accumulate_grad_batches is.
        self.after_optimizer_step(values)

    # ------------------------------------------------------------------------------------ logging
    def log_losses(
        self,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        batch_size: int,
        metrics: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Log ``train/loss``, ``train/<term>_loss`` for each named term and any other per-step ``metrics``.

        Every value is its mean over processes (the global batch's figure when each process holds an
        equal share), all of them reduced by one collective on the device: no host sync in the step.
        """
        names = ["train/loss", *(f"train/{name}_loss" for name in terms), *(metrics or {})]
        values = mean_over_processes([total, *terms.values(), *(metrics or {}).values()])
        self.log(names[0], values[0], on_step=True, prog_bar=True, batch_size=batch_size)
        self.log_dict(
            dict(zip(names[1:], values[1:], strict=True)), on_step=True, on_epoch=False, batch_size=batch_size
        )

    def log_skipped(self, num_skipped: int) -> None:
        """Count unreadable images the loader met, replaced or dropped (summed over the epoch)."""
        self.log(
            "data/skipped_images",
            float(num_skipped),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
        )
