"""Deterministic evaluation transform (k-NN, linear probe, feature export)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from sslvit.data.transforms.multicrop import IMAGENET_MEAN, IMAGENET_STD


class EvalTransform:
    """Resize the shorter side, center-crop, normalise: the DINO evaluation pipeline (Caron et al., 2021).

    Args:
        size: side of the square output (the global crop size the backbone was trained on).
        resize_size: shorter side before cropping; 256 for ``size=224`` reproduces the usual protocol.
            None means ``size``: no margin is cut, and images already ``size`` px square (Fashion-MNIST at
            28) pass through unresampled.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
    """

    def __init__(
        self,
        size: int,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = int(size)
        self.resize_size = int(resize_size) if resize_size is not None else self.size
        if self.resize_size < self.size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop size {self.size}")
        # Kept so that the raw-pixel k-NN can undo the normalisation (sslvit.eval.pixel_knn).
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.transform = T.Compose(
            [
                # Pillow returns an unresampled copy when the size already matches.
                T.Resize(self.resize_size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(self.size),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize_size={self.resize_size})"
