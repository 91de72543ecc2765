"""Frozen multi-layer features of a bare backbone, for offline evaluation (no Lightning)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def feature_slices(embed_dim: int, stored_blocks: int, blocks: int, avgpool: bool) -> list[slice]:
    """Column ranges of one evaluation feature inside :func:`extract_backbone_features`' rows.

    Rows are ``[CLS of the last ``stored_blocks`` blocks, oldest first | mean patch token of the last
    block]``; the DINO linear protocol concatenates the CLS of the last ``blocks`` blocks and, with
    ``avgpool``, appends the last block's average-pooled patch tokens.
    """
    if not 1 <= blocks <= stored_blocks:
        raise ValueError(f"blocks must lie in [1, {stored_blocks}]; got {blocks}")
    d = embed_dim
    cols = [slice((stored_blocks - blocks) * d, stored_blocks * d)]
    if avgpool:
        cols.append(slice(stored_blocks * d, (stored_blocks + 1) * d))
    return cols


def select(features: torch.Tensor, cols: list[slice]) -> torch.Tensor:
    """Concatenate the column ranges ``cols`` of ``features (n, F)``."""
    return torch.cat([features[:, c] for c in cols], dim=1)


@torch.no_grad()
def extract_backbone_features(
    backbone: nn.Module, loader: Iterable[Any], n_last_blocks: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of a frozen ``MaskedViT`` over ``loader``: CLS of the last blocks plus pooled patches.

    Args:
        backbone: module with ``get_intermediate_layers(images, n, norm=True)`` (MaskedViT).
        loader: yields ``(images (B,C,H,W), labels (B,)[, indices])`` in a fixed order.
        n_last_blocks: how many final blocks to keep the (normalised) CLS token of.
        device: where the backbone runs.

    Returns:
        ``features (n, (n_last_blocks + 1) * D)`` float32 on the CPU (see :func:`feature_slices`) and
        ``labels (n,)`` int64.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in loader:
            images, batch_labels = batch[0], batch[1]
            layers = backbone.get_intermediate_layers(  # type: ignore[operator]
                images.to(device, non_blocking=True), n=n_last_blocks, norm=True
            )
            cls = [c for _, c in layers]
            pooled = layers[-1][0].mean(dim=1)  # (B, N, D) -> (B, D)
            feats.append(torch.cat([*cls, pooled], dim=1).float().cpu())
            labels.append(torch.as_tensor(batch_labels, dtype=torch.int64))
    finally:
        backbone.train(was_training)
    if not feats:
        raise ValueError("evaluation loader yielded no batches")
    return torch.cat(feats), torch.cat(labels)
