"""Gram loss: match the patch-similarity structure of a student to that of a Gram teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_gram(patches: torch.Tensor) -> torch.Tensor:
    """``(B, N, D)`` patch features -> ``(B, N, N)`` cosine similarities between the patches of each image."""
    x = F.normalize(patches.float(), dim=-1)
    return x @ x.transpose(-1, -2)


class GramLoss(nn.Module):
    """Gram anchoring (Siméoni et al., 2025, DINOv3, arXiv:2508.10104, section 4.2).

    ``L = mean_b mean_{i,j} (X_S X_S^T - X_G X_G^T)_{b,i,j}^2`` with ``X`` the l2-normalised patch features
    of one image (``N`` patches), i.e. the squared Frobenius norm of the difference of the two Gram
    matrices divided by ``N^2``, averaged over images. The division by ``N^2`` is the official
    implementation's (``GramLoss.forward`` in facebookresearch/dinov3 at commit
    6876159a11b4df116f30f667f8c9888617df0751, an ``MSELoss`` over the ``(B, N, N)`` similarities, with
    ``img_level=True`` and no clipping of negative similarities, as its Gram-anchoring config), so the
    loss does not grow with the patch grid. Computed in fp32. The teacher side takes no gradient.
    """

    def forward(self, student_patches: torch.Tensor, teacher_patches: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` student and Gram-teacher patch features of the same images -> scalar loss."""
        if student_patches.shape != teacher_patches.shape or student_patches.ndim != 3:
            raise ValueError(
                "GramLoss needs (B, N, D) student and teacher patch features of one shape, got "
                f"{tuple(student_patches.shape)} and {tuple(teacher_patches.shape)}"
            )
        target = patch_gram(teacher_patches.detach())
        return F.mse_loss(patch_gram(student_patches), target)
