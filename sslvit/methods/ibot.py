"""iBOT as a LightningModule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.data.batch import MultiCropBatch
from sslvit.heads import DINOHead
from sslvit.losses import Centering, DINOLoss, IBOTPatchLoss
from sslvit.methods.multicrop import student_crop_features
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.self_distillation import SelfDistillationModule
from sslvit.methods.teacher_targets import teacher_targets
from sslvit.utils.masked_tokens import gather_masked
from sslvit.utils.schedules import whole_epochs


class IBOT(SelfDistillationModule):
    """Image BERT pre-training with an online tokenizer (Zhou et al., 2022, arXiv:2111.07832).

    DINO's cross-view loss on the CLS token (``L_cls``) plus masked image modelling as self-distillation
    (``L_MIM``): the student sees a masked global view, the teacher the same view unmasked, and at every
    masked patch the student's patch distribution is trained to match the teacher's. The teacher's patch
    head is the "online tokenizer". CLS and patch outputs have their own centers and teacher
    temperatures. ``L = cls_weight * L_cls + patch_weight * L_MIM``.

    Masked image modelling can start late (``mim_start_epoch``, the official ``pred_start_epoch``): before
    that epoch the student sees its global crops unmasked, as with a prediction ratio of 0, so ``L_MIM``
    is 0, and the patch teacher temperature waits at ``warmup_teacher_patch_temp``; its warm-up starts at
    that epoch.

    Args:
        backbone: student backbone (a ``MaskedViT``).
        optim: optimiser and schedules.
        out_dim: prototypes of the CLS head (8192 in the paper).
        patch_out_dim: prototypes of the patch head (8192).
        shared_head: one head for CLS and patch tokens (the paper's choice at ViT-S/B scale); needs
            ``patch_out_dim == out_dim``.
        hidden_dim / bottleneck_dim / head_layers / norm_last_layer: head shape.
        use_bn_in_head: batch norm in the heads' MLPs (off in the paper; see ``DINOHead``).
        student_temp: student temperature for both outputs (0.1).
        teacher_temp / warmup_teacher_temp: CLS teacher temperature after / at the start of warm-up.
        teacher_patch_temp / warmup_teacher_patch_temp: the same for patch outputs.
        warmup_teacher_temp_epochs: length of both warm-ups (30), whole epochs: as in the official code
            a temperature is ``linspace(warmup, final, 30)[epoch]``, constant within an epoch.
        mim_start_epoch: the first epoch with masked image modelling (0 for ViTs; 50 for Swin in the
            official recipes).
        center_momentum: momentum of both centers (0.9).
        cls_weight / patch_weight: loss weights (1 and 1).
        momentum_teacher / momentum_teacher_end: EMA momentum cosine (0.996 -> 1).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        out_dim: int = 8192,
        patch_out_dim: int = 8192,
        shared_head: bool = True,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn_in_head: bool = False,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_patch_temp: float = 0.07,
        warmup_teacher_patch_temp: float = 0.04,
        warmup_teacher_temp_epochs: int = 30,
        mim_start_epoch: int = 0,
        center_momentum: float = 0.9,
        cls_weight: float = 1.0,
        patch_weight: float = 1.0,
        momentum_teacher: float = 0.996,
        momentum_teacher_end: float = 1.0,
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim"])
        if shared_head and patch_out_dim != out_dim:
            raise ValueError(f"shared_head needs patch_out_dim == out_dim, got {patch_out_dim} and {out_dim}")
        head_args = (hidden_dim, bottleneck_dim, head_layers, norm_last_layer, use_bn_in_head)
        self.student["head"] = DINOHead(self.embed_dim, out_dim, *head_args)
        if not shared_head:
            self.student["patch_head"] = DINOHead(self.embed_dim, patch_out_dim, *head_args)
        self.build_teacher(momentum_teacher, momentum_teacher_end)
        self.cls_centering = Centering(out_dim, center_momentum)
        self.patch_centering = Centering(patch_out_dim, center_momentum)
        self.dino_loss = DINOLoss(student_temp)
        self.patch_loss = IBOTPatchLoss(student_temp)
        self.shared_head = shared_head
        self.teacher_temps = (warmup_teacher_temp, teacher_temp)
        self.teacher_patch_temps = (warmup_teacher_patch_temp, teacher_patch_temp)
        self.warmup_teacher_temp_epochs = whole_epochs(
            warmup_teacher_temp_epochs, "warmup_teacher_temp_epochs"
        )
        self.mim_start_epoch = whole_epochs(mim_start_epoch, "mim_start_epoch")
        self.cls_weight, self.patch_weight = cls_weight, patch_weight

    def patch_head(self, network: nn.ModuleDict) -> nn.Module:
        return network["head"] if self.shared_head else network["patch_head"]

    def last_layer_parameters(self) -> list[nn.Parameter]:
        heads = (
            [self.student["head"]] if self.shared_head else [self.student["head"], self.student["patch_head"]]
        )
        return [p for head in heads for p in head.last_layer_parameters]  # type: ignore[union-attr]

    def teacher_temps_at(self, step: int) -> tuple[float, float]:
        """CLS and patch teacher temperatures of optimizer step ``step``: one value per epoch; the patch
        warm-up starts at ``mim_start_epoch``."""
        epochs = self.warmup_teacher_temp_epochs
        return (
            self.warmup_per_epoch(step, *self.teacher_temps, epochs),
            self.warmup_per_epoch(step, *self.teacher_patch_temps, epochs, first_epoch=self.mim_start_epoch),
        )

    def mim_started(self, step: int) -> bool:
        """Whether optimizer step ``step`` masks the student's global crops."""
        return self.schedule_epoch(step) >= self.mim_start_epoch

    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        if batch.masks is None:
            raise ValueError("iBOT needs masked global crops: select a masking config (data/masking=ibot)")
        num_global, batch_size = len(batch.global_crops), batch.batch_size
        globals_ = torch.cat(batch.global_crops)  # (G*B, C, H, W)
        self.log_skipped(batch.num_skipped)
        student_backbone: Any = self.student["backbone"]
        masks, indices = batch.masks, batch.mask_indices
        assert indices is not None  # derived from masks by MultiCropBatch
        step = self.trainer.global_step
        if not self.mim_started(step):
            # A prediction ratio of 0: nothing masked and no patch term. The masks stay a tensor, so the
            # student's mask token and the patch head remain in the graph (with zero gradients) for DDP.
            masks, indices = torch.zeros_like(masks), indices[:0]

        cls_temp, patch_temp = self.teacher_temps_at(step)
        # iBOT's patch center moves with every patch token's logits; targets only where the student is
        # masked.
        targets = teacher_targets(
            self.teacher["backbone"],
            self.teacher["head"],
            self.patch_head(self.teacher),
            self.cls_centering,
            self.patch_centering,
            globals_,
            indices,
            (cls_temp, patch_temp),
            batch_size,
            update_with_all_patches=True,
        )

        student_out, student_cls = student_crop_features(student_backbone, globals_, masks, batch.local_crops)
        num_crops = num_global + len(batch.local_crops)
        student_cls_logits = self.student["head"](student_cls).chunk(num_crops)
        # The patch head runs only on masked tokens: the loss ignores the others. Gathered by index
        # (made in the loader): boolean indexing would sync the host with the device.
        student_masked_logits = self.patch_head(self.student)(
            gather_masked(student_out["x_norm_patchtokens"], indices)
        )

        cls_loss = self.dino_loss(list(student_cls_logits), list(targets.cls_probs.chunk(num_global)))
        patch_loss = self.patch_loss.forward_masked(
            student_masked_logits, targets.patch_probs, masks, indices
        )
        loss = self.cls_weight * cls_loss + self.patch_weight * patch_loss

        self.log_losses(loss, {"dino": cls_loss, "ibot": patch_loss}, batch_size)
        self.log_dict({"sched/teacher_temp": cls_temp, "sched/teacher_patch_temp": patch_temp}, on_step=True)
        # teacher_probs: the CLS targets the loss saw, read by sslvit.callbacks.HealthMonitor.
        return {
            "loss": loss,
            "features": targets.features,
            "teacher_probs": targets.cls_probs,
        }
