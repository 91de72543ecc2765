"""A frozen feature teacher: the ViT whose patch features VQ-KD distils into its tokenizer."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslvit.backbones.masked_vit import MaskedViT


class FeatureTeacher(nn.Module):
    """A frozen ViT that supplies final-layer patch features (B, N, D) and CLS features (B, D).

    BEiT v2 distils CLIP-B/16 or DINO patch features into its tokenizer (Peng et al., 2022,
    arXiv:2208.06366); any frozen ViT with a patch grid works. The teacher reads the same normalised
    images as the tokenizer (for our own checkpoints trained on the same data, the same normalisation);
    when its patch size differs, the images are resized so both grids match.

    Args:
        model: a ``MaskedViT`` or a timm ViT created with ``num_classes=0`` (``dynamic_img_size=True``
            if it must read other sizes than its native one).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        patch_embed: Any = getattr(model, "patch_embed", None)
        if patch_embed is None or not hasattr(model, "num_prefix_tokens"):
            raise ValueError(f"the teacher must be a ViT with patch tokens; got {type(model).__name__}")
        self.model: Any = model  # MaskedViT or a timm ViT: duck-typed below
        self.embed_dim = int(model.embed_dim)  # type: ignore[arg-type]
        self.patch_size = int(patch_embed.patch_size[0])
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> FeatureTeacher:
        super().train(False)  # frozen: no dropout / drop path, ever
        return self

    @torch.no_grad()
    def patch_features(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """``images (B,C,H,W)`` -> final normalised patch tokens ``(B, h*w, D)`` on ``grid = (h, w)``."""
        size = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bicubic", align_corners=False)
        if isinstance(self.model, MaskedViT):
            tokens = self.model.forward_features(images)["x_norm_patchtokens"]
        else:
            tokens = self.model.forward_features(images)[:, int(self.model.num_prefix_tokens) :]
        assert tokens is not None
        if tokens.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"teacher gave {tokens.shape[1]} patch tokens for a {grid[0]}x{grid[1]} grid")
        return tokens

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """CLS features ``(B, D)``."""
        if isinstance(self.model, MaskedViT):
            return self.model(images)
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
