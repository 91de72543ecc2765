"""Token-id targets of BEiT-style pretraining: the tokenizer check, the ids on the ViT's patch grid and
how many distinct codes they use."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.tokenizers.base import VisualTokenizer
from sslvit.utils.distributed import all_reduce_sum


def check_tokenizer(tokenizer: nn.Module) -> VisualTokenizer:
    """``tokenizer`` itself, or one clear error if it lacks the :class:`VisualTokenizer` interface."""
    if not isinstance(tokenizer, VisualTokenizer):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a visual tokenizer (needs vocab_size, downsample, "
            "grid_size and encode)"
        )
    return tokenizer


@torch.no_grad()
def tokenizer_target_ids(
    tokenizer: Any, tokenizer_images: torch.Tensor, patch_grid: tuple[int, int]
) -> torch.Tensor:
    """``(B, N)`` tokenizer ids of the tokenizer view, checked against the ViT patch grid."""
    ids = tokenizer.encode(tokenizer_images)  # (B, h, w)
    if tuple(ids.shape[1:]) != tuple(patch_grid):
        size = tuple(tokenizer_images.shape[-2:])
        raise ValueError(
            f"the tokenizer turns its {size[0]}x{size[1]} view into a "
            f"{ids.shape[1]}x{ids.shape[2]} grid, but the ViT patch grid is "
            f"{patch_grid[0]}x{patch_grid[1]}: set "
            f"tokenizer.downsample={tokenizer.downsample} (the loader sizes the view from it)"
        )
    return ids.flatten(1)


@torch.no_grad()
def global_distinct_codes(ids: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How many of ``num_codes`` ids occur in the ``ids`` of all processes (a float tensor, no host sync).

    A collapse check on the targets themselves; with no process group, the count of this process.
    """
    seen = torch.zeros(num_codes, device=ids.device).scatter_(0, ids.flatten().long(), 1.0)
    return (all_reduce_sum(seen) > 0).sum().float()
