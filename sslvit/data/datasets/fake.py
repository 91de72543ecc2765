"""Synthetic labelled images for tests and smoke runs: no files, deterministic, and learnable."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from PIL import Image


class FakeDataset:
    """Coloured stripe images whose class sets both the dominant hue and the stripe orientation.

    Sample ``i`` has label ``i % num_classes`` and is generated from its own generator seeded by
    ``(seed, i)`` (a ``numpy`` SeedSequence, so ``seed=0, i=1`` and ``seed=1, i=0`` differ), making it
    identical across epochs, workers and processes. Within a class, stripe frequency and phase, a small
    colour shift and pixel noise vary, so the classes are separable by features (colour *or*
    orientation) but the images are not copies of each other: a k-NN probe on a working encoder should
    score far above chance, a collapsed one at chance.

    With ``in_chans=3`` samples are RGB PIL images, with ``in_chans=1`` their grey (luma) version; with
    any other count, ``(C, H, W)`` float tensors in [0, 1] whose band levels are a cosine of the class
    phase shifted per band (what a multi-band array file gives after scaling).

    Args:
        num_samples: dataset length.
        image_size: side of the square RGB images.
        num_classes: number of classes (hues evenly spaced on the colour wheel, orientations on [0, pi)).
        seed: varies the images; use different seeds for train and validation sets.
        in_chans: channels of every sample.
    """

    def __init__(
        self,
        num_samples: int = 256,
        image_size: int = 32,
        num_classes: int = 4,
        seed: int = 0,
        in_chans: int = 3,
    ):
        if num_samples < 1 or image_size < 1 or num_classes < 1 or in_chans < 1:
            raise ValueError(
                f"FakeDataset needs positive sizes, got num_samples={num_samples}, "
                f"image_size={image_size}, num_classes={num_classes}, in_chans={in_chans}"
            )
        self.in_chans = int(in_chans)
        self.num_samples = num_samples
        self.image_size = image_size
        self.num_classes = num_classes
        self.seed = seed
        self.classes = [f"class_{c}" for c in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_samples)]
        coords = (np.arange(image_size, dtype=np.float64) + 0.5) / image_size
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")  # (H, W) in (0, 1)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Image.Image | torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"FakeDataset index {index} out of range [0, {self.num_samples})")
        label = self.targets[index]
        rng = np.random.default_rng((self.seed, index))
        angle = math.pi * label / self.num_classes
        frequency = rng.uniform(2.0, 4.0)  # stripes per image side
        phase = rng.uniform(0.0, 2.0 * math.pi)
        along = self._xx * math.cos(angle) + self._yy * math.sin(angle)
        stripes = 0.5 + 0.5 * np.sin(2.0 * math.pi * frequency * along + phase)  # (H, W) in [0, 1]
        if self.in_chans in (1, 3):
            colour = np.array(colorsys.hsv_to_rgb(label / self.num_classes, 0.8, 0.9))
        else:  # band b of class k: a cosine of the class phase, shifted by the band's position
            bands = np.arange(self.in_chans) / self.in_chans
            colour = 0.5 + 0.4 * np.cos(2.0 * math.pi * (label / self.num_classes - bands))
        colour = colour + rng.normal(0.0, 0.05, size=colour.shape)
        pixels = colour * (0.35 + 0.65 * stripes[..., None])  # (H, W, C)
        pixels = pixels + rng.normal(0.0, 0.06, size=pixels.shape)
        if self.in_chans not in (1, 3):
            bands_first = np.clip(pixels, 0.0, 1.0).astype(np.float32).transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(bands_first)), label
        image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
        return (image.convert("L") if self.in_chans == 1 else image), label

    def __repr__(self) -> str:
        return (
            f"FakeDataset(num_samples={self.num_samples}, image_size={self.image_size}, "
            f"num_classes={self.num_classes}, seed={self.seed}, in_chans={self.in_chans})"
        )
