"""PCA maps of patch features, the DINOv2 visualisation (Oquab et al., 2024, arXiv:2304.07193, fig. 1).

A first PCA over the patch features of all images together: its first component separates foreground
from background, and thresholding it gives a foreground mask. A second PCA over the foreground patches
only: its first three components, each scaled to [0, 1], become the R, G and B channels, so matching
object parts get matching colours across images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from sslvit.visualize.render import colorize, grid


@dataclass
class PCAMaps:
    """Result of :func:`pca_maps`.

    Attributes:
        rgb: ``(B, 3, h, w)`` in [0, 1]; background patches are 0 (black).
        foreground: ``(B, h, w)`` bool, True = foreground patch.
        first_component: ``(B, h, w)`` first-PCA score scaled to [0, 1], oriented so that foreground
            is high.
    """

    rgb: torch.Tensor
    foreground: torch.Tensor
    first_component: torch.Tensor


def principal_components(features: torch.Tensor, k: int) -> torch.Tensor:
    """Scores of the first ``k`` principal components of ``features (n, D)`` -> ``(n, k)``.

    Exact SVD of the centred matrix (n and D are small for a handful of images). A component's sign is
    arbitrary; it is fixed so that its largest-magnitude loading is positive, which makes colours
    reproducible from run to run.
    """
    x = features.float() - features.float().mean(dim=0, keepdim=True)
    k = min(k, *x.shape)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    directions = vh[:k]  # (k, D)
    signs = directions.gather(1, directions.abs().argmax(dim=1, keepdim=True)).sign()
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    return x @ directions.T


def _minmax(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    low, high = x.amin(dim=dim, keepdim=True), x.amax(dim=dim, keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-8)


def _border(h: int, w: int, device: torch.device) -> torch.Tensor:
    border = torch.zeros(h, w, dtype=torch.bool, device=device)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    return border


def pca_maps(
    patch_tokens: torch.Tensor,
    grid_size: tuple[int, int],
    threshold: float = 0.5,
    background_at_border: bool = True,
) -> PCAMaps:
    """Foreground mask and foreground-PCA colours of a batch's patch features.

    Args:
        patch_tokens: ``(B, N, D)`` patch features (e.g. ``x_norm_patchtokens``), ``N = h * w``.
        grid_size: patch grid ``(h, w)``.
        threshold: foreground = first-component score above this, after min-max scaling the score over
            all patches of the batch to [0, 1].
        background_at_border: orient the first component so that patches on the image border score
            lower on average than interior ones (objects tend to sit away from the border). Without it
            the orientation is the sign convention of :func:`principal_components`.

    Returns:
        :class:`PCAMaps`.
    """
    if patch_tokens.ndim != 3:
        raise ValueError(f"patch_tokens must be (B, N, D), got shape {tuple(patch_tokens.shape)}")
    b, n, d = patch_tokens.shape
    h, w = grid_size
    if h * w != n:
        raise ValueError(f"grid {h}x{w} does not match {n} patch tokens")
    flat = patch_tokens.detach().float().reshape(b * n, d)
    score = principal_components(flat, 1)[:, 0].reshape(b, h, w)
    if background_at_border and h > 2 and w > 2:
        border = _border(h, w, score.device)
        if score[:, border].mean() > score[:, ~border].mean():
            score = -score
    score = _minmax(score.flatten()).view(b, h, w)
    foreground = score > threshold

    rgb = torch.zeros(b * n, 3, device=flat.device)
    fg_flat = foreground.flatten()
    if int(fg_flat.sum()) >= 2:
        components = principal_components(flat[fg_flat], 3)  # (n_fg, <=3)
        rgb[fg_flat, : components.shape[1]] = _minmax(components, dim=0)
    rgb = rgb.view(b, h, w, 3).permute(0, 3, 1, 2).contiguous()
    return PCAMaps(rgb=rgb, foreground=foreground, first_component=score)


@torch.no_grad()
def backbone_pca_maps(backbone: Any, images: torch.Tensor, threshold: float = 0.5) -> PCAMaps:
    """:func:`pca_maps` of a ``MaskedViT``'s final normalised patch tokens for ``images (B, C, H, W)``."""
    grid = backbone.grid_size(images.shape[-2], images.shape[-1])
    patch_tokens = backbone.forward_features(images)["x_norm_patchtokens"]
    return pca_maps(patch_tokens, grid, threshold)


def pca_figure(images: torch.Tensor, maps: PCAMaps) -> torch.Tensor:
    """One row per image: the image, the first component (viridis), the foreground PCA colours.

    Args:
        images: ``(B, 3, H, W)`` displayable images in [0, 1].
        maps: :func:`pca_maps` of the same images.

    Returns:
        ``(3, H', W')`` image in [0, 1].
    """
    size = images.shape[-2:]
    first = F.interpolate(colorize(maps.first_component, normalize=False), size=size, mode="nearest")
    rgb = F.interpolate(maps.rgb.float().cpu(), size=size, mode="nearest")
    tiles = torch.stack([images.cpu(), first, rgb], dim=1)  # (B, 3 panels, 3, H, W)
    return grid(tiles.flatten(0, 1), ncol=3)
