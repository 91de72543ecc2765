"""Deterministic evaluation transform (k-NN, linear probe, feature export)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import transforms as T

from sslvit.data.channels import channel_values, check_in_chans
from sslvit.data.transforms.channel_ops import ImageLike, to_unit_tensor
from sslvit.data.transforms.multicrop import IMAGENET_MEAN, IMAGENET_STD


class EvalTransform:
    """Resize the shorter side, center-crop, normalise: the DINO evaluation pipeline (Caron et al., 2021).

    Args:
        size: side of the square output (the global crop size the backbone was trained on).
        resize_size: shorter side before cropping; 256 for ``size=224`` reproduces the usual protocol.
            None means ``size``: no margin is cut, and images already ``size`` px square (Fashion-MNIST at
            28) pass through unresampled.
        mean: per-channel normalisation mean (one value per channel, or one for all).
        std: per-channel normalisation std (likewise).
        in_chans: channels of the images (``data.in_chans``): PIL pictures, or float tensors in [0, 1]
            from array files (antialiased bicubic resize).
    """

    def __init__(
        self,
        size: int,
        resize_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        in_chans: int = 3,
    ) -> None:
        self.in_chans = check_in_chans(in_chans)
        self.size = int(size)
        self.resize_size = int(resize_size) if resize_size is not None else self.size
        if self.resize_size < self.size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than the crop size {self.size}")
        # Kept so that the raw-pixel k-NN can undo the normalisation (sslvit.eval.pixel_knn).
        self.mean = tuple(float(m) for m in channel_values(mean, self.in_chans, "data.eval_transform.mean"))
        self.std = tuple(float(s) for s in channel_values(std, self.in_chans, "data.eval_transform.std"))
        self.transform = T.Compose(
            [
                # Pillow returns an unresampled copy when the size already matches.
                T.Resize(self.resize_size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(self.size),
                to_unit_tensor,
                T.Normalize(self.mean, self.std),
            ]
        )

    def __call__(self, image: ImageLike) -> torch.Tensor:
        return self.transform(image)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize_size={self.resize_size})"
