"""Sinkhorn–Knopp normalisation of teacher outputs (DINOv2's replacement for centering)."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.utils.distributed import all_reduce_sum, is_distributed


class SinkhornKnopp(nn.Module):
    """Teacher targets as an equipartitioned soft assignment (Oquab et al., 2024, arXiv:2304.07193;
    the algorithm comes from SwAV, Caron et al., 2020, arXiv:2006.09882).

    ``Q = exp(logits / T)`` (K x n over the *global* batch) is scaled alternately so that every
    prototype receives the same total mass (rows: 1/K each) and every sample the same mass (columns:
    1/n each); the returned targets are the columns rescaled to sum to 1. Row and column sums are
    all-reduced, so with several processes the result equals that of one process holding the whole
    batch. Same interface as :class:`Centering` (``update`` does nothing), so methods can switch.

    Args:
        num_iters: normalisation rounds (3 in DINOv2).
    """

    def __init__(self, num_iters: int = 3) -> None:
        super().__init__()
        self.num_iters = num_iters

    @torch.no_grad()
    def probs(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(n, K) teacher logits on this process -> (n, K) fp32 targets, rows summing to 1.

        The number of samples may differ between processes (masked patch tokens): the global count is
        all-reduced. Processes holding no sample still take part in the collectives.
        """
        logits = teacher_logits.float() / temperature
        # Subtracting the global max keeps exp() finite; it cancels in the normalisation.
        local_max = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
        if is_distributed():
            torch.distributed.all_reduce(local_max, op=torch.distributed.ReduceOp.MAX)
        q = torch.exp(logits - local_max).t()  # (K, n)
        num_prototypes = q.shape[0]
        # Global sample count (no host sync; with no sample anywhere q is empty and nothing divides).
        total = all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
        q /= all_reduce_sum(q.sum()).clamp_min(1e-30)
        for _ in range(self.num_iters):
            q /= all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp_min(1e-30)  # each prototype: mass 1
            q /= num_prototypes
            q /= q.sum(dim=0, keepdim=True).clamp_min(1e-30)  # each sample: mass 1 (local columns)
            q /= total
        return (q * total).t()

    def update(self, teacher_logits: torch.Tensor) -> None:
        """Nothing to update: Sinkhorn–Knopp keeps no state across steps."""
