"""Reading backbone weights out of checkpoints (``init_from=``, ``checkpoint=``, ``teacher.path=``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import adapt_input_conv
from torch import nn

log = logging.getLogger(__name__)
_PATCH_WEIGHT = "patch_embed.proj.weight"

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


def fit_input_channels(
    backbone: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Adapt a checkpoint's patch embedding to this backbone's input channels (RGB weights for grey or
    multi-band images); other keys pass through unchanged.

    timm's ``adapt_input_conv``: for 1 channel the kernel is summed over the source channels, so a grey
    image gives the patch tokens that the source model gives the same image replicated to every
    channel; for N channels the source kernels repeat cyclically (R, G, B, R, ...) scaled by
    ``source channels / N``, which keeps the response to an image that is equal in every channel. The
    normalisation must be equal across channels for the first to hold exactly (grey statistics). Logged.
    """
    own = backbone.state_dict().get(_PATCH_WEIGHT)
    theirs = state.get(_PATCH_WEIGHT)
    if own is None or theirs is None or own.ndim != 4 or theirs.ndim != 4:
        return state
    wanted, stored = own.shape[1], theirs.shape[1]
    if wanted == stored or own.shape[0] != theirs.shape[0] or own.shape[2:] != theirs.shape[2:]:
        return state  # the same channels, or another architecture: the shape check reports that
    adapted = adapt_input_conv(wanted, theirs, base_chans=stored)
    how = "summed over" if wanted == 1 else f"repeated cyclically, scaled by {stored}/{wanted}, from"
    log.info(
        "%s: patch embedding adapted to %d input channels (kernel %s its %d)", source, wanted, how, stored
    )
    return {**state, _PATCH_WEIGHT: adapted}


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

    A position embedding trained at another resolution is resampled to this backbone's grid, and a
    patch embedding for another number of input channels is adapted (:func:`fit_input_channels`).
    """
    state = fit_input_channels(backbone, fit_position_embedding(backbone, state), source)
    mismatch = describe_mismatch(backbone.state_dict(), state)
    if mismatch:
        raise ValueError(f"{source} does not fit this backbone: {mismatch}")
    backbone.load_state_dict(state)
