"""DINOv2's distillation of a smaller model from a frozen, larger one, as a LightningModule."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from sslvit.backbones.distillation_teacher import DistillationTeacher
from sslvit.data.batch import MultiCropBatch
from sslvit.heads import DINOHead
from sslvit.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from sslvit.methods.multicrop import student_crop_features
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.self_distillation import SelfDistillationModule
from sslvit.methods.teacher_targets import target_normalisers, teacher_targets
from sslvit.utils.masked_tokens import gather_masked


class Distillation(SelfDistillationModule):
    """Distillation of a smaller student from a frozen pretrained teacher (Oquab et al., 2024,
    arXiv:2304.07193, section 5 "Distillation").

    The DINOv2 training loop with four changes: the targets come from a larger *frozen* teacher (its
    pretrained backbone and its DINO and iBOT heads, :class:`DistillationTeacher`); the student sees every
    crop whole (no masking) and, through its backbone config, runs without stochastic depth; the iBOT
    loss is taken on the patch tokens of the global crops; and a spare EMA of the student is kept and
    is the final model. The losses are DINOv2's: DINO on the CLS token, iBOT on patch tokens, KoLeo on the
    student's global-crop CLS features, with Sinkhorn–Knopp (or centering) targets from the teacher.
    ``L = dino_weight * L_dino + ibot_weight * L_ibot + koleo_weight * L_koleo``.

    Which patch tokens the iBOT loss reads: the positions the loader's mask generator selects when the
    batch carries masks (``data/masking=dinov2``, the default, as in the released distillation code of
    DINOv3, which keeps the heads' cost that of DINOv2's masked tokens), or every patch token of both
    global crops when it carries none (``data/masking=none``). The student is never masked either way.

    Names: :attr:`frozen_teacher` is the pretrained model distilled from; :attr:`teacher` is, as in every
    self-distillation method here, the EMA copy of :attr:`student` (backbone and heads). Evaluation
    (``forward``, the k-NN / probe callbacks), ``eval.py``, export, ``init_from`` and a later
    ``teacher.path`` all read ``teacher.*``, i.e. the EMA student.

    The student's heads are trained from scratch and project to the teacher heads' prototype counts;
    backbone widths may differ, patch sizes may not (the iBOT loss pairs tokens position by position).

    Args:
        backbone: student backbone (a ``MaskedViT``, usually smaller than the teacher's).
        optim: optimiser and schedules.
        teacher: the frozen teacher (see ``sslvit.utils.distillation_teacher_loader``).
        hidden_dim / bottleneck_dim / head_layers: the student heads' shape (2048 / 256 / 3).
        teacher_targets: "sinkhorn_knopp" (paper) or "centering".
        sinkhorn_iterations: Sinkhorn–Knopp iterations (3).
        student_temp, teacher_temp, warmup_teacher_temp, warmup_teacher_temp_epochs: as in DINOv2.
        center_momentum: used only with ``teacher_targets="centering"``.
        dino_weight / ibot_weight / koleo_weight: loss weights (1, 1, 0.1).
        ema_momentum / ema_momentum_end: cosine schedule of the student's EMA (0.994 -> 1).
    """

    # The student is never masked: its mask token (kept for evaluation and init_from) gets no gradient.
    unused_parameters = ("student.backbone.mask_token",)

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        teacher: DistillationTeacher,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        teacher_targets: str = "sinkhorn_knopp",
        sinkhorn_iterations: int = 3,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 30.0,
        center_momentum: float = 0.9,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        ema_momentum: float = 0.994,
        ema_momentum_end: float = 1.0,
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim", "teacher"])
        patch_embed: Any = backbone.patch_embed
        student_patch = int(patch_embed.patch_size[0])
        if teacher.patch_size != student_patch:
            raise ValueError(
                f"the teacher's patch size {teacher.patch_size} differs from the student's {student_patch}: "
                "the iBOT loss pairs their patch tokens position by position"
            )
        out_dim = teacher.prototypes(teacher.dino_head)
        patch_out_dim = teacher.prototypes(teacher.patch_head)
        head_args = (hidden_dim, bottleneck_dim, head_layers, True)
        self.student["dino_head"] = DINOHead(self.embed_dim, out_dim, *head_args)
        self.student["ibot_head"] = DINOHead(self.embed_dim, patch_out_dim, *head_args)
        self.build_teacher(ema_momentum, ema_momentum_end)  # the spare EMA of the student
        self.frozen_teacher = self.keep_frozen(teacher)
        self.cls_targets, self.patch_targets = target_normalisers(
            teacher_targets, out_dim, patch_out_dim, sinkhorn_iterations, center_momentum
        )
        self.dino_loss = DINOLoss(student_temp)
        self.ibot_loss = IBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()
        self.teacher_temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}

    def hide_unused_parameters_from_ddp(self) -> None:
        """Also hide the frozen teacher: it takes no gradient, and every process loads the same file, so
        DDP need not broadcast its (large) weights at the start."""
        super().hide_unused_parameters_from_ddp()
        frozen = itertools.chain(self.frozen_teacher.named_parameters(), self.frozen_teacher.named_buffers())
        self._ddp_params_and_buffers_to_ignore += [f"frozen_teacher.{name}" for name, _ in frozen]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        heads = [self.student["dino_head"], self.student["ibot_head"]]
        return [p for head in heads for p in head.last_layer_parameters]  # type: ignore[union-attr]

    def teacher_temp_at(self, step: int) -> float:
        """The teacher temperature of optimizer step ``step``: a new value every step, as DINOv2."""
        return self.warmup_per_step(step, *self.teacher_temps, self.warmup_teacher_temp_epochs)

    def ibot_positions(
        self, batch: MultiCropBatch, globals_: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(G*B, N)`` bool selection of patch tokens the iBOT loss reads and their ``(M,)`` flat
        positions: the loader's masks when the batch has them, else every patch token."""
        if batch.masks is not None:
            assert batch.mask_indices is not None  # derived from masks by MultiCropBatch
            return batch.masks, batch.mask_indices
        backbone: Any = self.student["backbone"]
        grid = backbone.grid_size(*globals_.shape[-2:])
        rows = globals_.shape[0]
        selected = torch.ones(rows, grid[0] * grid[1], dtype=torch.bool, device=globals_.device)
        return selected, torch.arange(selected.numel(), device=globals_.device)

    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        num_global, batch_size = len(batch.global_crops), batch.batch_size
        globals_ = torch.cat(batch.global_crops)  # (G*B, C, H, W)
        selected, indices = self.ibot_positions(batch, globals_)  # (G*B, N), (M,)
        self.log_skipped(batch.num_skipped)

        temp = self.teacher_temp_at(self.trainer.global_step)
        teacher = self.frozen_teacher
        targets = teacher_targets(  # under no_grad: nothing flows back into the teacher
            teacher.backbone,
            teacher.dino_head,
            teacher.patch_head,
            self.cls_targets,
            self.patch_targets,
            globals_,
            indices,
            (temp, temp),
            batch_size,
        )

        # No masking: the student sees whole crops; `selected` only picks the iBOT loss's tokens.
        student_out, student_cls = student_crop_features(
            self.student["backbone"], globals_, None, batch.local_crops
        )
        student_global_cls = student_out["x_norm_clstoken"]  # (G*B, D)
        num_crops = num_global + len(batch.local_crops)
        student_cls_logits = self.student["dino_head"](student_cls).chunk(num_crops)
        student_patch_logits = self.student["ibot_head"](
            gather_masked(student_out["x_norm_patchtokens"], indices)
        )  # (M, K')

        terms = {
            "dino": self.dino_loss(list(student_cls_logits), list(targets.cls_probs.chunk(num_global))),
            "ibot": self.ibot_loss.forward_masked(
                student_patch_logits, targets.patch_probs, selected, indices
            ),
            # Per global view and per process, as DINOv2's KoLeo.
            "koleo": torch.stack([self.koleo_loss(x) for x in student_global_cls.chunk(num_global)]).sum(),
        }
        loss = sum(self.weights[name] * value for name, value in terms.items())

        self.log_losses(loss, terms, batch_size)  # type: ignore[arg-type]
        self.log("sched/teacher_temp", temp, on_step=True, on_epoch=False)
        with torch.no_grad():  # the EMA student's features: what evaluation reads (probe, health)
            features = self(batch.global_crops[0])
        return {"loss": loss, "features": features, "teacher_probs": targets.cls_probs}
