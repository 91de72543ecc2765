"""Teacher-output centering: the collapse-avoidance half of DINO's centering + sharpening."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.utils.distributed import all_reduce_sum


class Centering(nn.Module):
    """Running center of teacher logits (Caron et al., 2021, arXiv:2104.14294, section 3.1).

    Teacher targets are ``softmax((g_t - c) / tau_t)``. After each step the center moves towards the mean
    teacher logit of the *global* batch: ``c <- m c + (1 - m) mean(g_t)``, with the sum and the row
    count all-reduced across processes so every process holds the same center, also when processes
    hold different numbers of rows. Subtracting the center keeps one
    dimension from dominating; the low teacher temperature keeps the targets from becoming uniform.

    Args:
        out_dim: number of prototypes K.
        momentum: center momentum m (0.9 in DINO).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def probs(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(n, K) teacher logits -> (n, K) centred, sharpened target probabilities (fp32)."""
        return torch.softmax((teacher_logits.float() - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, teacher_logits: torch.Tensor) -> None:
        """Move the center towards the mean of ``teacher_logits`` (n, K) over all processes."""
        # Sum and row count in one all-reduce: the count is the global one, so with uneven rows per
        # process (masked patch tokens) every process gets the same center, the mean over all rows.
        # The count is filled on the device (no host-to-device copy, no wait).
        local_sum = teacher_logits.float().sum(dim=0, keepdim=True)  # (1, K)
        local_count = local_sum.new_full((1, 1), float(teacher_logits.shape[0]))
        totals = all_reduce_sum(torch.cat([local_sum, local_count], dim=1))  # (1, K + 1)
        batch_mean = totals[:, :-1] / totals[:, -1:].clamp_min(1.0)  # no row anywhere: no move of the mean
        self.center.mul_(self.momentum).add_(batch_mean, alpha=1.0 - self.momentum)
