"""DINO as a LightningModule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.data.batch import MultiCropBatch
from sslvit.heads import DINOHead
from sslvit.losses import Centering, DINOLoss
from sslvit.methods.multicrop import cat_by_resolution
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.self_distillation import SelfDistillationModule
from sslvit.utils.schedules import whole_epochs


class DINO(SelfDistillationModule):
    """Self-distillation with no labels (Caron et al., 2021, arXiv:2104.14294).

    The student sees every crop, the EMA teacher only the global crops; the student's distribution on
    each view is trained to match the teacher's centred, sharpened distribution on every *other* global
    view. Defaults are the paper's ViT-S/16 recipe.

    Args:
        backbone: student backbone (a ``MaskedViT``).
        optim: optimiser and schedules.
        out_dim: number of prototypes K (65536).
        hidden_dim / bottleneck_dim / head_layers / norm_last_layer: DINOHead shape (2048 / 256 / 3 / True).
        use_bn_in_head: batch norm in the head's MLP (False for ViTs in the paper).
        student_temp: student temperature (0.1).
        teacher_temp: teacher temperature after warm-up (0.04-0.07; paper default 0.04 for ViT-S, 0.07 max).
        warmup_teacher_temp: teacher temperature in the first epoch (0.04).
        warmup_teacher_temp_epochs: length of the linear teacher-temperature warm-up (30), whole epochs:
            as in the official code the temperature is ``linspace(warmup_teacher_temp, teacher_temp,
            30)[epoch]``, constant within an epoch, and reaches ``teacher_temp`` in epoch 29.
        center_momentum: centering momentum (0.9).
        momentum_teacher / momentum_teacher_end: EMA momentum cosine (0.996 -> 1).
    """

    # No crop is masked: the backbone's mask token (kept for evaluation and init_from) gets no gradient.
    unused_parameters = ("student.backbone.mask_token",)

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn_in_head: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        center_momentum: float = 0.9,
        momentum_teacher: float = 0.996,
        momentum_teacher_end: float = 1.0,
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim"])
        self.student["head"] = DINOHead(
            self.embed_dim, out_dim, hidden_dim, bottleneck_dim, head_layers, norm_last_layer, use_bn_in_head
        )
        self.build_teacher(momentum_teacher, momentum_teacher_end)
        self.centering = Centering(out_dim, center_momentum)
        self.dino_loss = DINOLoss(student_temp)
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_teacher_temp_epochs = whole_epochs(
            warmup_teacher_temp_epochs, "warmup_teacher_temp_epochs"
        )

    def last_layer_parameters(self) -> list[nn.Parameter]:
        head: DINOHead = self.student["head"]  # type: ignore[assignment]
        return head.last_layer_parameters

    def teacher_temp_at(self, step: int) -> float:
        """The teacher temperature of optimizer step ``step``: one value per epoch."""
        return self.warmup_per_epoch(
            step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_epochs
        )

    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        num_global = len(batch.global_crops)
        self.log_skipped(batch.num_skipped)

        with torch.no_grad():
            teacher_cls = self.teacher["backbone"](torch.cat(batch.global_crops))  # (G*B, D)
            teacher_logits = self.teacher["head"](teacher_cls)  # (G*B, K)
            teacher_temp = self.teacher_temp_at(self.trainer.global_step)
            teacher_probs_all = self.centering.probs(teacher_logits, teacher_temp)  # (G*B, K)
            teacher_probs = teacher_probs_all.chunk(num_global)

        crops = batch.global_crops + batch.local_crops
        student_backbone: Any = self.student["backbone"]
        outputs = student_backbone.forward_features_list(cat_by_resolution(crops))
        student_cls = torch.cat([out["x_norm_clstoken"] for out in outputs])
        student_logits = self.student["head"](student_cls).chunk(len(crops))  # S x (B, K)

        dino_loss = self.dino_loss(list(student_logits), list(teacher_probs))
        self.centering.update(teacher_logits)

        self.log_losses(dino_loss, {"dino": dino_loss}, batch.batch_size)
        self.log("sched/teacher_temp", teacher_temp, on_step=True, on_epoch=False)
        # teacher_probs: the targets the loss saw, read by sslvit.callbacks.HealthMonitor.
        return {
            "loss": dino_loss,
            "features": teacher_cls[: batch.batch_size].detach(),
            "teacher_probs": teacher_probs_all,
        }
