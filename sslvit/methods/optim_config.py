"""Optimisation settings shared by every teacher–student method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sslvit.methods.step_guard import SkippingAdamW
from sslvit.utils.grad_clip import CLIP_MODES


@dataclass
class OptimConfig:
    """AdamW and its step-based schedules (the papers' schedules; DINO's defaults).

    Attributes:
        base_lr: learning rate at the reference batch size (DINO: 5e-4 at 256).
        lr_scaling: how lr grows with the global batch B: "linear" (base * B / ref, DINO/iBOT),
            "sqrt" (base * sqrt(B / ref), DINOv2 with ref 1024) or "none".
        lr_reference_batch: the reference batch size of that rule.
        min_lr: final lr of the cosine.
        warmup_epochs: linear lr warm-up from 0.
        weight_decay / weight_decay_end: cosine weight-decay schedule (0.04 -> 0.4).
        betas: AdamW betas.
        clip_grad: max gradient norm (0 disables).
        clip_grad_mode: what one norm covers (``sslvit.utils.grad_clip``): "global" (all gradients
            together, BEiT), "per_network" (each student network, DINOv2) or "per_parameter" (every
            parameter's gradient on its own, DINO and iBOT).
        freeze_last_layer_epochs: prototypes get no update during these first epochs (1 in DINO).
        layer_decay: layer-wise lr decay (1 = off).
        patch_embed_lr_mult: lr factor on the patch embedding.
        batch_size_per_device: per-device batch, read from the data config to compute the global batch.
        fused: use the fused AdamW kernel (CUDA only; ignored on CPU).

    The defaults are conf/optim/adamw.yaml's (a test keeps them equal). Fused, a step with non-finite
            gradients is skipped on the device; unfused, the host reads that decision once per step
            (:class:`~sslvit.methods.step_guard.SkippingAdamW`).
    """

    base_lr: float = 5e-4
    lr_scaling: str = "linear"
    lr_reference_batch: int = 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 3.0
    clip_grad_mode: str = "global"
    freeze_last_layer_epochs: float = 1.0
    layer_decay: float = 1.0
    patch_embed_lr_mult: float = 1.0
    batch_size_per_device: int = 64
    fused: bool = True

    def __post_init__(self) -> None:
        if self.lr_scaling not in ("linear", "sqrt", "none"):
            raise ValueError(f"optim.lr_scaling must be linear, sqrt or none, got {self.lr_scaling!r}")
        if self.clip_grad_mode not in CLIP_MODES:
            raise ValueError(f"optim.clip_grad_mode must be one of {CLIP_MODES}, got {self.clip_grad_mode!r}")

    def scaled_lr(self, global_batch: int) -> float:
        """Peak learning rate for ``global_batch`` images per optimizer step."""
        ratio = global_batch / self.lr_reference_batch
        if self.lr_scaling == "linear":
            return self.base_lr * ratio
        if self.lr_scaling == "sqrt":
            return self.base_lr * ratio**0.5
        return self.base_lr

    def adamw(self, groups: list[dict[str, Any]]) -> torch.optim.AdamW:
        """AdamW over ``param_groups`` output; lr / weight decay are written before every step, and a
        step marked ``found_inf`` (non-finite gradients) is skipped."""
        fused = self.fused and torch.cuda.is_available()
        return SkippingAdamW(groups, lr=0.0, betas=(self.betas[0], self.betas[1]), fused=fused or None)


def apply_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Write one step's lr (times each group's ``lr_scale``) and weight decay (where ``apply_wd``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
        group["weight_decay"] = weight_decay if group["apply_wd"] else 0.0
