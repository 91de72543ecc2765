"""KoLeo regulariser: spread the features of a batch uniformly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko–Leonenko entropy estimator as a loss (Sablayrolles et al., 2019, arXiv:1806.03198;
    used by DINOv2, Oquab et al., 2024, arXiv:2304.07193).

    ``L = -1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps)`` on l2-normalised features, computed in fp32
    within each process's batch. A batch of one has no neighbour: the loss is 0 (skipped), never inf.

    Args:
        eps: added to the distances so duplicated features give a large but finite loss.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> scalar loss."""
        if features.shape[0] < 2:
            return features.sum() * 0.0  # keeps the graph (and DDP's gradient hooks) intact
        x = F.normalize(features.float(), dim=-1, eps=self.eps)
        # Nearest neighbour by the largest dot product, excluding the point itself.
        dots = x @ x.t()
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)
        distances = (x - x[nearest]).norm(dim=-1)
        return -torch.log(distances + self.eps).mean()
