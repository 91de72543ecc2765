"""Histograms of ids (prototypes, codebook entries) that never make a GPU host wait."""

from __future__ import annotations

import torch
from torch import Tensor


def id_counts(ids: Tensor, num_ids: int) -> Tensor:
    """How often each of ``0 .. num_ids - 1`` occurs in ``ids`` (any shape): an int64 ``(num_ids,)``.

    ``torch.bincount`` on a GPU reads the largest id back to the host to size its output, even with
    ``minlength``, which stalls the queue of kernels; adding ones into a vector of the known size does not.
    Every id must lie in ``[0, num_ids)`` (argmaxes over ``num_ids`` scores do).
    """
    flat = ids.reshape(-1).long()
    return torch.zeros(num_ids, dtype=torch.long, device=ids.device).index_add_(
        0, flat, torch.ones_like(flat)
    )
