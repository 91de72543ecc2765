"""A multi-crop batch as one picture: each image's global crops (masked patches shaded), then its locals."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sslvit.data.batch import MultiCropBatch
from sslvit.visualize.render import denormalize, grid

_MASK_COLOUR = torch.tensor([1.0, 0.1, 0.1]).view(1, 3, 1, 1)


def shade_masked_patches(images: torch.Tensor, masks: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Blend red over the masked patches of ``images (B, 3, H, W)`` in [0, 1].

    Args:
        images: displayable images.
        masks: ``(B, N)`` bool, True = masked, row-major over the square-patch grid of the images.
        alpha: opacity of the shading.
    """
    b, _, height, width = images.shape
    if masks.shape[0] != b:
        raise ValueError(f"masks have {masks.shape[0]} rows for {b} images")
    n = masks.shape[1]
    patch = round((height * width / n) ** 0.5) if n else 0
    if n == 0 or patch == 0 or height % patch or width % patch or (height // patch) * (width // patch) != n:
        raise ValueError(f"{n} mask entries do not form a square-patch grid over {height}x{width} images")
    grid_mask = masks.view(b, 1, height // patch, width // patch).float().cpu()
    pixel_mask = F.interpolate(grid_mask, size=(height, width), mode="nearest")
    return images * (1 - alpha * pixel_mask) + _MASK_COLOUR * alpha * pixel_mask


def _pad_to(images: torch.Tensor, height: int, width: int, value: float = 1.0) -> torch.Tensor:
    """Centre smaller crops on a white canvas so crops of all sizes share one grid (and keep scale)."""
    dh, dw = height - images.shape[-2], width - images.shape[-1]
    return F.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=value)


def crops_and_masks_grid(
    batch: MultiCropBatch,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    max_images: int = 4,
) -> torch.Tensor:
    """One row per image: its global crops (masked patches shaded red), then its local crops.

    Local crops are drawn at their own pixel size, centred in a global-sized cell, so the picture shows
    how much smaller they are.

    Args:
        batch: a collated :class:`~sslvit.data.batch.MultiCropBatch`; ``masks`` (if any) are
            ``(n_global * B, N)``, view-major like ``torch.cat(global_crops)``.
        mean / std: the normalisation of the crops (None: min-max per crop).
        max_images: how many images of the batch to draw.

    Returns:
        ``(3, H', W')`` image in [0, 1].
    """
    b = min(batch.batch_size, max_images)
    n_global = len(batch.global_crops)
    views = []
    for v, crops in enumerate(batch.global_crops):
        shown = denormalize(crops[:b], mean, std)
        if batch.masks is not None:
            rows = batch.masks[v * batch.batch_size : v * batch.batch_size + b]  # view-major rows
            shown = shade_masked_patches(shown, rows)
        views.append(shown)
    height, width = views[0].shape[-2:]
    for crops in batch.local_crops:
        views.append(_pad_to(denormalize(crops[:b], mean, std), height, width))
    per_image = torch.stack(views, dim=1)  # (b, n_views, 3, H, W)
    ncol = n_global + len(batch.local_crops)
    return grid(per_image.flatten(0, 1), ncol=ncol)
