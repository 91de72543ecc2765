"""Visualisations as library functions: attention maps, PCA maps, crops and masks, tokenizer diagnostics.

Everything returns plain tensors (``(3, H, W)`` images in [0, 1]) rendered with torchvision and PIL;
:func:`~sslvit.visualize.render.to_pil` and :func:`~sslvit.visualize.render.save_png` turn them into
pictures. The :class:`~sslvit.callbacks.visualization.Visualizer` logs them during training.
"""

from sslvit.visualize.attention import attention_figure, attention_maps, cls_attention_maps, keep_top_mass
from sslvit.visualize.crops import crops_and_masks_grid, shade_masked_patches
from sslvit.visualize.pca import PCAMaps, backbone_pca_maps, pca_figure, pca_maps, principal_components
from sslvit.visualize.render import colorize, denormalize, grid, overlay, save_png, to_pil, upscale
from sslvit.visualize.tokenizer import (
    CodebookUsage,
    codebook_histogram,
    codebook_usage,
    reconstruction_grid,
)

__all__ = [
    "CodebookUsage",
    "PCAMaps",
    "attention_figure",
    "attention_maps",
    "backbone_pca_maps",
    "cls_attention_maps",
    "codebook_histogram",
    "codebook_usage",
    "colorize",
    "crops_and_masks_grid",
    "denormalize",
    "grid",
    "keep_top_mass",
    "overlay",
    "pca_figure",
    "pca_maps",
    "principal_components",
    "reconstruction_grid",
    "save_png",
    "shade_masked_patches",
    "to_pil",
    "upscale",
]
