"""Batch normalisation over the global batch of all processes, on any device, autograd included."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.utils.distributed import all_reduce_sum_with_grad


class GlobalBatchNorm1d(nn.Module):
    """``BatchNorm1d`` (batch statistics only, no running averages) whose statistics span every process.

    Under data parallelism each process holds a slice of the batch; the mean and variance are those of
    the concatenated global batch, as one process holding all of it would compute, and the backward pass
    carries the gradient through them to every process (the official DINO code gets this from
    ``SyncBatchNorm``, which Lightning's ``sync_batchnorm`` cannot apply to CPU tensors). Two
    all-reduces: the sums and row count, then the squared deviations from the global mean (numerically
    stable where features share a large common part). With no process group it is plain batch norm.

    Parameters and state-dict keys (``weight``, ``bias``) are those of ``nn.BatchNorm1d`` with
    ``track_running_stats=False``, so heads saved with either load into the other. It is deliberately not
    a ``_BatchNorm`` subclass: Lightning's ``sync_batchnorm`` would otherwise replace it.

    Args:
        num_features: channels C of the ``(N, C)`` input.
        eps: added to the variance (1e-5, torch's default).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` -> ``(N, C)`` normalised with the statistics of all processes' rows (N may differ)."""
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"GlobalBatchNorm1d expects (N, {self.num_features}) input, got {tuple(x.shape)}"
            )
        values = x.float()  # statistics in fp32 under mixed precision, as torch's batch norm keeps them
        # A fill on the device, not torch.tensor(N): no host-to-device copy in the step.
        count = torch.full((1,), x.shape[0], dtype=values.dtype, device=x.device)
        sums = all_reduce_sum_with_grad(torch.cat([values.sum(dim=0), count]))  # (C + 1,)
        total = sums[-1]
        centred = values - sums[:-1] / total  # (N, C)
        variance = all_reduce_sum_with_grad(centred.square().sum(dim=0)) / total  # biased, as batch norm
        out = centred * torch.rsqrt(variance + self.eps) * self.weight + self.bias
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"
