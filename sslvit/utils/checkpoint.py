"""Reading backbone weights out of checkpoints (``init_from=``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

# Where a backbone's weights live in the checkpoints we write, best source first: the EMA teacher
# gives better features than the student (DINO paper, section 5.2).
_BACKBONE_PREFIXES = ("teacher.backbone.", "student.backbone.")


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError or RuntimeError depending on the content
        raise ValueError(f"checkpoint {path} cannot be loaded safely: {str(err).splitlines()[0]}") from err


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


def load_backbone_weights(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``backbone``; a missing key or a shape mismatch is a one-line error.

    A position embedding trained at another resolution is resampled to this backbone's grid.
    """
    state = fit_position_embedding(backbone, state)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        details = []
        if mismatched:
            k = mismatched[0]
            details.append(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ValueError(f"{source} does not fit this backbone: " + "; ".join(details))
    backbone.load_state_dict(state)
