"""DINOv2 as a LightningModule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.data.batch import MultiCropBatch
from sslvit.heads import DINOHead
from sslvit.losses import DINOLoss, GramLoss, IBOTPatchLoss, KoLeoLoss
from sslvit.methods.gram_teacher import GramConfig, GramTeacher
from sslvit.methods.multicrop import student_crop_features
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.self_distillation import SelfDistillationModule
from sslvit.methods.teacher_targets import target_normalisers, teacher_targets
from sslvit.utils.fsdp import sharded_root
from sslvit.utils.masked_tokens import gather_masked


class DINOv2(SelfDistillationModule):
    """Learning robust visual features without supervision (Oquab et al., 2024, arXiv:2304.07193).

    Composes three blocks: DINO's cross-view loss on the CLS token (its own head), iBOT's masked-patch
    loss (a *separate* head, run only on masked tokens) and the KoLeo regulariser on the student's
    global-crop CLS features. Teacher targets are normalised with Sinkhorn–Knopp over the global batch
    (or by centering, ``teacher_targets="centering"``).
    ``L = dino_weight * L_dino + ibot_weight * L_ibot + koleo_weight * L_koleo``.

    Optionally with Gram anchoring (``gram.enabled``; DINOv3, Siméoni et al., 2025, arXiv:2508.10104): from
    optimizer step ``gram.start_step`` on, ``+ gram.weight * L_gram``, which keeps the patch-similarity
    matrices of the student's (masked) global crops close to those of a :class:`GramTeacher`, a snapshot
    of the EMA teacher refreshed every ``gram.refresh_every`` steps.

    Args:
        backbone: student backbone (a ``MaskedViT``; registers and LayerScale 1e-5 come from its config).
        optim: optimiser and schedules (layer-wise lr decay and patch-embed lr multiplier in pretraining).
        out_dim / patch_out_dim: prototypes of the DINO and iBOT heads (65536 each in the paper).
        hidden_dim / bottleneck_dim / head_layers: head shape (2048 / 256 / 3).
        teacher_targets: "sinkhorn_knopp" (paper) or "centering".
        sinkhorn_iterations: Sinkhorn–Knopp iterations (3).
        student_temp, teacher_temp, warmup_teacher_temp: as in DINO.
        warmup_teacher_temp_epochs: length of the teacher-temperature warm-up (30). As in the official
            code the temperature changes every step, ``linspace(warmup_teacher_temp, teacher_temp, W)``
            over the ``W`` steps of these epochs, then ``teacher_temp``.
        center_momentum: used only with ``teacher_targets="centering"``.
        dino_weight / ibot_weight / koleo_weight: loss weights (1, 1, 0.1).
        momentum_teacher / momentum_teacher_end: EMA momentum cosine (0.992 -> 1 for ViT-L).
        gram: Gram anchoring settings (off when None or not ``enabled``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        out_dim: int = 65536,
        patch_out_dim: int = 65536,
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
        momentum_teacher: float = 0.992,
        momentum_teacher_end: float = 1.0,
        gram: GramConfig | None = None,
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim", "gram"])
        head_args = (hidden_dim, bottleneck_dim, head_layers, True)
        self.student["dino_head"] = DINOHead(self.embed_dim, out_dim, *head_args)
        self.student["ibot_head"] = DINOHead(self.embed_dim, patch_out_dim, *head_args)
        self.build_teacher(momentum_teacher, momentum_teacher_end)
        self.cls_targets, self.patch_targets = target_normalisers(
            teacher_targets, out_dim, patch_out_dim, sinkhorn_iterations, center_momentum
        )
        self.dino_loss = DINOLoss(student_temp)
        self.ibot_loss = IBOTPatchLoss(student_temp)
        self.koleo_loss = KoLeoLoss()
        self.teacher_temps = (warmup_teacher_temp, teacher_temp)
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}
        # Only when enabled, so that checkpoints without Gram anchoring hold no Gram teacher.
        self.gram_teacher: GramTeacher | None = None
        if gram is not None and gram.enabled:
            self.gram_teacher = GramTeacher(self.teacher["backbone"], gram)
            self.gram_loss = GramLoss()
            self.weights["gram"] = gram.weight

    def last_layer_parameters(self) -> list[nn.Parameter]:
        heads = [self.student["dino_head"], self.student["ibot_head"]]
        return [p for head in heads for p in head.last_layer_parameters]  # type: ignore[union-attr]

    def teacher_temp_at(self, step: int) -> float:
        """The teacher temperature of optimizer step ``step`` (CLS and patch targets alike)."""
        return self.warmup_per_step(step, *self.teacher_temps, self.warmup_teacher_temp_epochs)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Snapshot the EMA teacher into the Gram teacher before a refresh step (outside the forward).

        Under gradient accumulation every micro-batch of a refresh step copies the same EMA teacher (it
        changes only after the optimizer step), so the snapshot is the same.
        """
        if self.gram_teacher is not None and self.gram_teacher.due(self.trainer.global_step):
            self.gram_teacher.refresh(self.teacher["backbone"], sharded_root=sharded_root(self.trainer))

    def gram_targets(self, global_crops: torch.Tensor) -> torch.Tensor | None:
        """The Gram teacher's ``(G*B, N, D)`` patch features of the global crops, or None at a step without
        the Gram loss."""
        if self.gram_teacher is None or not self.gram_teacher.active(self.trainer.global_step):
            return None
        grid = self.student["backbone"].grid_size(*global_crops.shape[-2:])  # type: ignore[operator]
        return self.gram_teacher.patch_features(global_crops, grid)

    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        if batch.masks is None:
            raise ValueError("DINOv2 needs masks on its global crops: select data/masking=dinov2")
        num_global, batch_size = len(batch.global_crops), batch.batch_size
        globals_, masks = torch.cat(batch.global_crops), batch.masks  # (G*B, C, H, W), (G*B, N)
        # (M,) masked-token positions, made in the loader: gathering by index never syncs with the host.
        indices = batch.mask_indices
        assert indices is not None  # derived from masks by MultiCropBatch
        self.log_skipped(batch.num_skipped)
        student_backbone: Any = self.student["backbone"]

        temp = self.teacher_temp_at(self.trainer.global_step)
        targets = teacher_targets(
            self.teacher["backbone"],
            self.teacher["dino_head"],
            self.teacher["ibot_head"],  # run only where the student was masked
            self.cls_targets,
            self.patch_targets,
            globals_,
            indices,
            (temp, temp),
            batch_size,
        )

        # Before the student's forward, so that its transient activations never meet the student's.
        gram_targets = self.gram_targets(globals_)

        student_out, student_cls = student_crop_features(student_backbone, globals_, masks, batch.local_crops)
        student_global_cls = student_out["x_norm_clstoken"]  # (G*B, D)
        num_crops = num_global + len(batch.local_crops)
        student_cls_logits = self.student["dino_head"](student_cls).chunk(num_crops)
        student_patch_logits = self.student["ibot_head"](
            gather_masked(student_out["x_norm_patchtokens"], indices)
        )  # (M, K')

        terms = {
            "dino": self.dino_loss(list(student_cls_logits), list(targets.cls_probs.chunk(num_global))),
            "ibot": self.ibot_loss.forward_masked(student_patch_logits, targets.patch_probs, masks, indices),
            # Per global view and per process, as in the paper's implementation: neighbours among this
            # process's images of the same view (so N processes are not one process on N times the batch).
            "koleo": torch.stack([self.koleo_loss(x) for x in student_global_cls.chunk(num_global)]).sum(),
        }
        if gram_targets is not None:
            # The student's patch features of the *masked* global crops, as in the official code.
            terms["gram"] = self.gram_loss(student_out["x_norm_patchtokens"], gram_targets)
        loss = sum(self.weights[name] * value for name, value in terms.items())

        self.log_losses(loss, terms, batch_size)  # type: ignore[arg-type]
        self.log("sched/teacher_temp", temp, on_step=True, on_epoch=False)
        # teacher_probs: the CLS targets the loss saw, read by sslvit.callbacks.HealthMonitor.
        return {
            "loss": loss,
            "features": targets.features,
            "teacher_probs": targets.cls_probs,
        }
