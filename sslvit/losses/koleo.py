"""KoLeo regulariser: spread the features of a batch uniformly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko–Leonenko entropy estimator as a loss (Sablayrolles et al., 2019, arXiv:1806.03198;
    used by DINOv2, Oquab et al., 2024, arXiv:2304.07193).

    ``L = -1/n sum_i log(||x_i - x_j(i) + eps|| + eps)`` on l2-normalised features, where ``j(i)`` is the
    nearest other feature, computed in fp32 within each process's batch. ``eps`` enters twice, as in
    DINOv2's implementation (``nn.PairwiseDistance(2, eps)``): added to every coordinate of the
    difference and to the distance, so an exact duplicate gives ``-log(eps * sqrt(D) + eps)`` (15.4
    for D = 384), a large but finite loss with finite gradients. A batch of one has no neighbour: the
    loss is 0 (skipped), never inf.

    Args:
        eps: the normalisation's, the difference's and the distance's guard (1e-8 in DINOv2).
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
        distances = F.pairwise_distance(x, x[nearest], p=2.0, eps=self.eps)  # ||x - y + eps||
        return -torch.log(distances + self.eps).mean()
