"""Masked tokens by index instead of by boolean mask: no host-device sync in the training step.

``tokens[masks]`` on a GPU must count the True entries before it can size its output, so the host waits
for the device at every call. The positions of the masked tokens are therefore computed once where the
masks are made (the loader's collate, on the CPU) and the step gathers with ``index_select``, whose
output size is known from the index tensor's shape.
"""

from __future__ import annotations

import torch


def true_indices(masks: torch.Tensor) -> torch.Tensor:
    """(M,) int64 positions of the True entries of ``masks.flatten()``, in order."""
    return masks.flatten().nonzero().flatten()


def gather_masked(tokens: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
    """The masked rows of ``tokens (B, N, ...)`` as ``(M, ...)``: ``tokens[masks]`` without a host sync."""
    return tokens.flatten(0, 1).index_select(0, mask_indices)
