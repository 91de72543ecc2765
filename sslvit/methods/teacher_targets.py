"""The teacher's side of iBOT and DINOv2: CLS and masked-patch target distributions of the global crops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sslvit.losses import Centering, SinkhornKnopp
from sslvit.utils.masked_tokens import gather_masked


def target_normalisers(
    kind: str, out_dim: int, patch_out_dim: int, sinkhorn_iterations: int, center_momentum: float
) -> tuple[SinkhornKnopp | Centering, SinkhornKnopp | Centering]:
    """The CLS and patch target normalisers of DINOv2-style losses: Sinkhorn-Knopp (the paper's) or
    DINO's centring, one each so that the two heads keep separate statistics."""
    if kind == "sinkhorn_knopp":
        return SinkhornKnopp(sinkhorn_iterations), SinkhornKnopp(sinkhorn_iterations)
    if kind == "centering":
        return Centering(out_dim, center_momentum), Centering(patch_out_dim, center_momentum)
    raise ValueError(f"teacher_targets must be sinkhorn_knopp or centering, got {kind!r}")


@dataclass
class TeacherTargets:
    """Targets of one step.

    Attributes:
        cls_probs: ``(G*B, K)`` CLS-token target distributions of the global crops, crop-major.
        patch_probs: ``(M, K')`` patch target distributions at the student's masked positions.
        features: ``(B, D)`` the first global crop's teacher CLS features (what callbacks read).
    """

    cls_probs: torch.Tensor
    patch_probs: torch.Tensor
    features: torch.Tensor


@torch.no_grad()
def teacher_targets(
    backbone: Any,
    cls_head: nn.Module,
    patch_head: nn.Module,
    cls_normalizer: Centering | SinkhornKnopp,
    patch_normalizer: Centering | SinkhornKnopp,
    global_crops: torch.Tensor,
    mask_indices: torch.Tensor,
    temps: tuple[float, float],
    batch_size: int,
    update_with_all_patches: bool = False,
) -> TeacherTargets:
    """The teacher forward under ``no_grad``, then centering or Sinkhorn–Knopp into target distributions.

    The normalisers are updated right after their probabilities are taken (which used the previous
    state), so that no teacher logits stay alive through the student's forward and backward (1.2 GiB for
    DINOv2 ViT-S/14 at batch 128).

    Args:
        backbone: the teacher backbone.
        cls_head / patch_head: the teacher's heads for the CLS and the patch tokens (may be one head).
        cls_normalizer / patch_normalizer: turn logits into targets (``probs``) and learn from them
            (``update``).
        global_crops: ``(G*B, C, H, W)`` the unmasked global crops.
        mask_indices: ``(M,)`` the student's masked positions in the flattened ``(G*B * N)`` grid (made in
            the loader: gathering by index never syncs with the host).
        temps: teacher temperatures of the CLS and the patch targets.
        batch_size: B, images per crop.
        update_with_all_patches: the patch normaliser learns from every patch token's logits (iBOT's
            center), not only the masked ones (DINOv2): the patch head then runs on every token.
    """
    out = backbone.forward_features(global_crops)
    cls_logits = cls_head(out["x_norm_clstoken"])  # (G*B, K)
    cls_probs = cls_normalizer.probs(cls_logits, temps[0])  # (G*B, K)
    cls_normalizer.update(cls_logits)
    if update_with_all_patches:
        all_patch_logits = patch_head(out["x_norm_patchtokens"])  # (G*B, N, K')
        # Per-row softmax: the probabilities of the gathered rows are those of all rows, gathered.
        patch_probs = patch_normalizer.probs(gather_masked(all_patch_logits, mask_indices), temps[1])
        patch_normalizer.update(all_patch_logits.flatten(0, 1))
    else:
        patch_logits = patch_head(gather_masked(out["x_norm_patchtokens"], mask_indices))  # (M, K')
        patch_probs = patch_normalizer.probs(patch_logits, temps[1])
        patch_normalizer.update(patch_logits)
    # A copy: a view would keep the whole normalised teacher output alive.
    features = out["x_norm_clstoken"][:batch_size].clone()
    return TeacherTargets(cls_probs, patch_probs, features)
