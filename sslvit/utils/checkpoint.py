"""Reading backbone weights out of checkpoints (``init_from=``, ``checkpoint=``, ``teacher.path=``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

# Where a backbone's weights live in the checkpoints we write, best source first: the EMA teacher
# gives better features than the student (DINO paper, section 5.2).
_BACKBONE_PREFIXES = ("teacher.backbone.", "student.backbone.")


def backbone_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """Extract backbone weights from one of our Lightning checkpoints or a plain backbone state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    for prefix in _BACKBONE_PREFIXES:
        found = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def fit_position_embedding(backbone: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Resample a checkpoint's ``pos_embed`` to this backbone's patch grid (e.g. 224 -> 518 px for
    DINOv2's high-resolution stage); other keys pass through unchanged."""
    own = backbone.state_dict().get("pos_embed")
    theirs = state.get("pos_embed")
    if own is None or theirs is None or own.shape == theirs.shape or own.shape[-1] != theirs.shape[-1]:
        return state
    prefix = int(getattr(backbone, "num_prefix_tokens", 1))
    old_side = math.isqrt(theirs.shape[1] - prefix)
    patch_embed: Any = backbone.patch_embed
    new_grid = list(patch_embed.grid_size)
    if old_side * old_side != theirs.shape[1] - prefix:
        return state  # not a square grid we can resample: let the shape check report it
    resampled = resample_abs_pos_embed(theirs, new_grid, [old_side, old_side], num_prefix_tokens=prefix)
    return {**state, "pos_embed": resampled}


def describe_mismatch(own: Mapping[str, Any], theirs: Mapping[str, Any]) -> str:
    """How a state dict ``theirs`` fails to fit a model's ``own`` (tensors or shapes per key): the first
    shape mismatch and the counts of mismatched, missing and unexpected keys; ``""`` when it fits."""
    shape = {k: _shape(v) for k, v in own.items()}
    other = {k: _shape(v) for k, v in theirs.items()}
    missing = sorted(set(shape) - set(other))
    unexpected = sorted(set(other) - set(shape))
    mismatched = [k for k in shape if k in other and shape[k] != other[k]]
    details = []
    if mismatched:
        k = mismatched[0]
        more = f" (and {len(mismatched) - 1} more shapes)" if len(mismatched) > 1 else ""
        details.append(f"{k}: checkpoint {other[k]} vs model {shape[k]}{more}")
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    return "; ".join(details)


def _shape(value: Any) -> tuple[int, ...] | None:
    """A tensor's shape; a shape given as a tuple or ``torch.Size``; None for a non-tensor value."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(value) if isinstance(value, tuple | list) else None


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``backbone``; a missing key or a shape mismatch is a one-line error.

    A position embedding trained at another resolution is resampled to this backbone's grid.
    """
    state = fit_position_embedding(backbone, state)
    mismatch = describe_mismatch(backbone.state_dict(), state)
    if mismatch:
        raise ValueError(f"{source} does not fit this backbone: {mismatch}")
    backbone.load_state_dict(state)
