"""Sinkhorn–Knopp normalisation of teacher outputs (DINOv2's replacement for centering)."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.utils.distributed import all_reduce_sum, is_distributed


def _logsumexp_over_all_samples(x: torch.Tensor) -> torch.Tensor:
    """(n, K) -> (K,) ``log sum_n exp(x[n, k])`` over the samples of every process; ``x`` is overwritten.

    Shifted by each prototype's own maximum over all processes (a MAX and a SUM all-reduce of K
    values), so a prototype whose logits all lie far below the others' keeps its exact mass. A process
    holding no sample contributes -inf to the maximum and 0 to the sum.
    """
    shift = x.amax(dim=0) if x.shape[0] else x.new_full((x.shape[1],), float("-inf"))
    if is_distributed():
        torch.distributed.all_reduce(shift, op=torch.distributed.ReduceOp.MAX)
    # No sample on any process: nothing is normalised, but the arithmetic stays finite.
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return all_reduce_sum(x.sub_(shift).exp_().sum(dim=0)).log_().add_(shift)


class SinkhornKnopp(nn.Module):
    """Teacher targets as an equipartitioned soft assignment (Oquab et al., 2024, arXiv:2304.07193;
    the algorithm comes from SwAV, Caron et al., 2020, arXiv:2006.09882).

    ``Q = exp(logits / T)`` (K x n over the *global* batch) is scaled alternately so that every
    prototype receives the same total mass (rows: 1/K each) and every sample the same mass (columns:
    1/n each); the returned targets are the columns rescaled to sum to 1. Prototype masses are
    all-reduced, so with several processes the result equals that of one process holding the whole
    batch. Same interface as :class:`Centering` (``update`` does nothing), so methods can switch.

    Args:
        num_iters: normalisation rounds (3 in DINOv2).
    """

    def __init__(self, num_iters: int = 3) -> None:
        super().__init__()
        if num_iters < 1:
            raise ValueError(f"SinkhornKnopp needs num_iters >= 1, got {num_iters}")
        self.num_iters = num_iters

    @torch.no_grad()
    def probs(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """(n, K) teacher logits on this process -> (n, K) fp32 targets, rows summing to 1.

        The number of samples may differ between processes (masked patch tokens); processes holding
        no sample still take part in the collectives.

        The normalisations only rescale prototypes and samples, so the iterate is
        ``Q[n, k] = exp(L[n, k] + log_a[k] + log_b[n])`` with ``L = logits / T`` in fp32. The first
        round runs in the log domain: ``log_a = -logsumexp_n(L)`` (over every process's samples), then
        ``log_b = -logsumexp_k(L + log_a)``. Taking ``exp(L)`` first instead would lose whole prototypes
        once the logit span exceeds about 88 nats (N(0, 2^2) logits at T = 0.07; cosine logits with a
        few dead prototypes at T = 0.02): their mass underflows to zero and their targets come out
        wrong (NaN in DINOv2's implementation, which takes no maximum out). After that round both
        scalings are absorbed into ``E = exp(L + log_a + log_b)``, whose rows sum to 1 and whose columns
        sum to at least 1/K, so the remaining rounds rescale ``E`` by vectors (two matrix-vector
        products each) without any mass underflowing. The constants 1/K and 1/n cancel in the result;
        so does the first normalisation by the total mass. The last sample normalisation together with
        the final rescaling by n makes every row sum to 1.
        """
        num_samples, num_prototypes = teacher_logits.shape
        # L = logits / T read in the logits' dtype, computed and written in fp32 (the 1-d operand takes
        # part in type promotion); one (n, K) buffer serves every pass.
        inv_temp = torch.full((1,), 1.0 / temperature, device=teacher_logits.device)
        work = torch.mul(teacher_logits, inv_temp)
        # Round 1, prototypes, in the log domain: log_a = -logsumexp_n(L).
        log_a = -_logsumexp_over_all_samples(work)
        # Round 1, samples, in the log domain: E = exp(L + log_a - rowmax) / rowsum.
        torch.addcmul(log_a, teacher_logits, inv_temp, out=work)
        if num_samples:
            work.sub_(work.amax(dim=1, keepdim=True))
        work.exp_()
        sample_scale = 1.0 / work.sum(dim=1)  # b
        prototype_scale = work.new_ones(num_prototypes)  # a
        for _ in range(self.num_iters - 1):
            # Each prototype's mass over all processes' samples, sum_n b_n E[n, k], made equal.
            prototype_scale = 1.0 / all_reduce_sum(torch.mv(work.t(), sample_scale))
            # Each sample's mass sum_k E[n, k] a_k made equal (local rows); with the final rescaling
            # the rows sum to 1.
            sample_scale = 1.0 / torch.mv(work, prototype_scale)
        return work.mul_(prototype_scale).mul_(sample_scale.unsqueeze(1))

    def update(self, teacher_logits: torch.Tensor) -> None:
        """Nothing to update: Sinkhorn–Knopp keeps no state across steps."""
