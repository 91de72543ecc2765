"""Last-block CLS self-attention maps, the DINO visualisation (Caron et al., 2021, arXiv:2104.14294).

The CLS query of the last block attends to the CLS token, the register tokens and the patches. Only the
patch keys form a map: register tokens (Darcet et al., 2024, arXiv:2309.16588) soak up attention that
would otherwise land on a few artefact patches, so including them would distort the map.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sslvit.visualize.render import colorize, grid


def cls_attention_maps(
    attention: torch.Tensor,
    grid_size: tuple[int, int],
    num_register_tokens: int = 0,
    renormalize: bool = True,
) -> torch.Tensor:
    """CLS-to-patch attention of every head on the patch grid.

    Args:
        attention: ``(B, heads, T, T)`` softmax weights with the token layout ``[CLS, R registers,
            N patches]`` (as returned by ``MaskedViT.get_last_selfattention``).
        grid_size: patch grid ``(h, w)`` with ``h * w = N``.
        num_register_tokens: R, the register tokens to skip.
        renormalize: rescale each head's patch weights to sum to 1 (the mass on CLS and registers is
            dropped), so maps of models with and without registers are comparable.

    Returns:
        ``(B, heads, h, w)`` attention of the CLS query over the patches.
    """
    if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention must be (B, heads, T, T), got shape {tuple(attention.shape)}")
    h, w = grid_size
    start = 1 + num_register_tokens
    if attention.shape[-1] != start + h * w:
        raise ValueError(
            f"attention has {attention.shape[-1]} tokens, expected 1 CLS + {num_register_tokens} registers "
            f"+ {h}x{w} patches = {start + h * w}"
        )
    maps = attention[:, :, 0, start:].float()  # (B, heads, N): CLS query, patch keys
    if renormalize:
        maps = maps / maps.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return maps.reshape(*maps.shape[:2], h, w)


def keep_top_mass(maps: torch.Tensor, mass: float) -> torch.Tensor:
    """Boolean mask of the largest entries of each map that together hold ``mass`` of its total.

    DINO's thresholded maps (``mass=0.6`` in the paper's figures): the smallest set of patches whose
    attention adds up to at least ``mass`` of the map's sum.

    Args:
        maps: ``(..., h, w)`` non-negative maps.
        mass: fraction in (0, 1].

    Returns:
        ``(..., h, w)`` bool, True = kept.
    """
    if not 0.0 < mass <= 1.0:
        raise ValueError(f"mass must be in (0, 1], got {mass}")
    flat = maps.flatten(-2).float()
    flat = flat / flat.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    values, order = flat.sort(dim=-1, descending=True)
    before = values.cumsum(dim=-1) - values  # mass of the strictly larger entries
    keep_sorted = before < mass
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.view_as(maps)


@torch.no_grad()
def attention_maps(
    backbone: Any,
    images: torch.Tensor,
    threshold: float | None = None,
    upsample: bool = True,
) -> torch.Tensor:
    """Per-head CLS attention maps of a ``MaskedViT``'s last block, optionally thresholded.

    Args:
        backbone: a ``MaskedViT`` (``get_last_selfattention``, ``grid_size``, ``patch_size``,
            ``num_register_tokens``).
        images: ``(B, C, H, W)`` normalised as in training.
        threshold: if set, return the :func:`keep_top_mass` masks (as 0/1 floats) instead of weights.
        upsample: enlarge the ``(h, w)`` maps to the ``(H, W)`` image size (nearest, one block per patch).

    Returns:
        ``(B, heads, H, W)`` (or ``(B, heads, h, w)`` without ``upsample``) float maps.
    """
    grid = backbone.grid_size(images.shape[-2], images.shape[-1])
    attention = backbone.get_last_selfattention(images)
    maps = cls_attention_maps(attention, grid, int(backbone.num_register_tokens))
    if threshold is not None:
        maps = keep_top_mass(maps, threshold).float()
    if upsample:
        maps = F.interpolate(maps, size=images.shape[-2:], mode="nearest")
    return maps


def attention_figure(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """One row per image: the image, then each head's map in viridis (each map min-max scaled).

    Args:
        images: ``(B, 3, H, W)`` displayable images in [0, 1] (see ``render.denormalize``).
        maps: ``(B, heads, h, w)`` maps from :func:`attention_maps` (weights or thresholded masks).

    Returns:
        ``(3, H', W')`` image in [0, 1].
    """
    b, heads = maps.shape[:2]
    coloured = colorize(maps.flatten(0, 1))  # (B * heads, 3, h, w)
    coloured = F.interpolate(coloured, size=images.shape[-2:], mode="nearest").view(
        b, heads, 3, *images.shape[-2:]
    )
    tiles = torch.cat([images.cpu()[:, None], coloured], dim=1)  # (B, 1 + heads, 3, H, W)
    return grid(tiles.flatten(0, 1), ncol=1 + heads)
