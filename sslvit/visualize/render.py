"""Turning tensors into displayable images with PIL and torchvision only (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from sslvit.utils.atomic_write import atomic_write

# The perceptually uniform "viridis" colour map (van der Walt and Smith, 2015) sampled at 0, 0.1, ..., 1;
# linear interpolation between these 11 anchors stays within a few RGB levels of the 256-entry table.
_VIRIDIS = torch.tensor(
    [
        [0.267, 0.005, 0.329],
        [0.283, 0.141, 0.458],
        [0.254, 0.265, 0.530],
        [0.207, 0.372, 0.553],
        [0.164, 0.471, 0.558],
        [0.128, 0.567, 0.551],
        [0.135, 0.659, 0.518],
        [0.267, 0.749, 0.441],
        [0.478, 0.821, 0.318],
        [0.741, 0.873, 0.150],
        [0.993, 0.906, 0.144],
    ]
)


def denormalize(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """Undo ``Normalize(mean, std)`` and clamp to [0, 1]; without ``mean``/``std``, min-max per image.

    Args:
        images: ``(B, C, H, W)`` normalised images. Shown: the first 3 channels when there are at least
            3 (an RGB image, or a multi-band image's first bands as R, G, B), else the first channel
            as grey.
        mean / std: the per-channel statistics the data transform normalised with (one value, or one
            per channel).

    Returns:
        ``(B, 3, H, W)`` float in [0, 1] on the CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    if mean is not None and std is not None:
        m = torch.as_tensor(list(mean), dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(list(std), dtype=x.dtype).view(1, -1, 1, 1)
        if m.shape[1] != x.shape[1] and m.shape[1] != 1:
            m, s = m[:, :1], s[:, :1]  # grey images served with per-channel stats of equal value
        x = x * s + m
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (high - low).clamp_min(1e-8)
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    return x.clamp(0.0, 1.0)


def colorize(values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Map scalar maps ``(B, H, W)`` to viridis RGB ``(B, 3, H, W)`` in [0, 1].

    Args:
        values: scalar maps.
        normalize: min-max scale each map to [0, 1] first (else values are clamped to [0, 1]).
    """
    v = values.detach().float().cpu()
    if normalize:
        low = v.flatten(1).amin(dim=1).view(-1, 1, 1)
        high = v.flatten(1).amax(dim=1).view(-1, 1, 1)
        v = (v - low) / (high - low).clamp_min(1e-8)
    v = v.clamp(0.0, 1.0) * (len(_VIRIDIS) - 1)
    lower = v.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (v - lower).unsqueeze(-1)
    rgb = _VIRIDIS[lower] * (1 - frac) + _VIRIDIS[lower + 1] * frac  # (B, H, W, 3)
    return rgb.permute(0, 3, 1, 2).contiguous()


def overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend viridis-coloured maps ``heat (B, h, w)`` over ``images (B, 3, H, W)`` in [0, 1]."""
    coloured = colorize(heat)
    if coloured.shape[-2:] != images.shape[-2:]:
        coloured = F.interpolate(coloured, size=images.shape[-2:], mode="nearest")
    return (1 - alpha) * images.cpu() + alpha * coloured


def grid(tiles: torch.Tensor, ncol: int, padding: int = 2, pad_value: float = 1.0) -> torch.Tensor:
    """Tile ``(n, 3, H, W)`` images row by row, ``ncol`` per row, into one ``(3, H', W')`` image."""
    return make_grid(tiles.float().cpu(), nrow=ncol, padding=padding, pad_value=pad_value)


def upscale(image: torch.Tensor, min_side: int = 256) -> torch.Tensor:
    """Nearest-neighbour enlarge a ``(3, H, W)`` image so its shorter side is at least ``min_side``.

    Tiny inputs (28-px Fashion-MNIST, 4x4 patch grids) are unreadable at their native size.
    """
    factor = max(1, -(-min_side // min(image.shape[-2:])))
    if factor == 1:
        return image
    return F.interpolate(image[None], scale_factor=factor, mode="nearest")[0]


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(3, H, W)`` float in [0, 1] -> PIL RGB image."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, mode="RGB")


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``(3, H, W)`` image in [0, 1] as PNG (parent folders are created)."""
    picture = to_pil(image)
    return atomic_write(path, lambda f: picture.save(f, format="PNG"), what="image")
