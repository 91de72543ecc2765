"""Collapse diagnostics as pure functions of tensors (no Lightning): entropies and effective rank."""

from __future__ import annotations

import math

import torch


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats along the last dim, with ``0 log 0 = 0``: ``(..., K) -> (...)``."""
    p = probs.float()
    return -torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p)).sum(dim=-1)


def kl_to_uniform(probs: torch.Tensor) -> torch.Tensor:
    """``KL(p || uniform) = log K - H(p)`` along the last dim: 0 for uniform, ``log K`` for one-hot."""
    return math.log(probs.shape[-1]) - entropy(probs)


def effective_rank(features: torch.Tensor, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., 2023, arXiv:2210.02885): ``exp`` of the entropy of the normalised
    singular values of a ``(n, D)`` embedding matrix.

    Between 1 (all rows on one line, e.g. identical embeddings) and ``min(n, D)`` (all singular values
    equal); a rank-k matrix with equal singular values scores k.
    """
    if features.ndim != 2 or min(features.shape) == 0:
        raise ValueError(f"features must be a non-empty (n, D) matrix, got shape {tuple(features.shape)}")
    singular = torch.linalg.svdvals(features.detach().double())
    total = singular.sum()
    if total <= 0:
        return 1.0  # the zero matrix: nothing spread out at all
    p = singular / total + eps
    return float(torch.exp(-(p * p.log()).sum()))
