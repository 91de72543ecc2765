"""The loader workers' half of ``device_stage="crops"``: decode, draw the crop boxes and flips, send
the image.

Cutting and resampling the ten crops of an image is most of the CPU cost of the multi-crop recipe
(docs/benchmarks.md). Here a worker keeps the decoded image whole (its long side capped, so a batch of phone
photos stays a few hundred MB; the folder dataset already decodes large JPEGs at a reduced scale for
it), draws every view's ``RandomResizedCrop`` box and flip exactly as torchvision does on that image,
and the crops are cut on the device
(:func:`~sslvit.data.transforms.device_crops.crop_sources`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from sslvit.data.batch import CropSourceBatch
from sslvit.data.collate import MaskFn, draw_masks, readable

_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range, as the CPU views use


class CropPlan:
    """``image -> (uint8 (3, h, w), boxes (V, 4), flips (V,))`` with V = global then local views.

    Args:
        global_crop_size / local_crop_size: output sides of the crops (made later, on the device).
        num_global_crops / num_local_crops: views per image.
        global_crop_scale / local_crop_scale: ``RandomResizedCrop`` area ranges.
        flip_p: horizontal-flip probability.
        max_side: images whose long side exceeds this are first shrunk to it (PIL bicubic, aspect
            kept); boxes are drawn on the shrunk image, so the area fractions are unchanged.
    """

    def __init__(
        self,
        global_crop_size: int,
        local_crop_size: int,
        num_global_crops: int,
        num_local_crops: int,
        global_crop_scale: tuple[float, float],
        local_crop_scale: tuple[float, float],
        flip_p: float,
        max_side: int,
    ) -> None:
        if max_side < global_crop_size:
            raise ValueError(f"max_side {max_side} is smaller than the global crop size {global_crop_size}")
        self.global_crop_size, self.local_crop_size = int(global_crop_size), int(local_crop_size)
        self.num_global, self.num_local = int(num_global_crops), int(num_local_crops)
        self.scales = [global_crop_scale] * self.num_global + [local_crop_scale] * self.num_local
        self.flip_p = float(flip_p)
        self.max_side = int(max_side)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if max(image.size) > self.max_side:
            shrink = self.max_side / max(image.size)
            size = (max(1, round(image.width * shrink)), max(1, round(image.height * shrink)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        boxes = []
        for scale in self.scales:
            top, left, height, width = T.RandomResizedCrop.get_params(image, list(scale), list(_RATIO))
            boxes.append((left, top, width, height))
        flips = torch.rand(len(self.scales)) < self.flip_p
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # one writable copy
        return pixels, torch.tensor(boxes, dtype=torch.float32).view(-1, 4), flips

    def collate(
        self, samples: Sequence[Any], mask_fn: MaskFn | None = None, patch_size: int | None = None
    ) -> CropSourceBatch:
        """Stack ``((image, boxes, flips), label)`` samples; images go top-left on a zero canvas sized to
        the batch's largest. Unreadable (None) samples are dropped and counted; masks as in
        ``collate_multicrop``, on the global crops' patch grid."""
        kept = readable(samples)
        height = max(s[0][0].shape[1] for s in kept)
        width = max(s[0][0].shape[2] for s in kept)
        images = torch.zeros(len(kept), 3, height, width, dtype=torch.uint8)
        for canvas, sample in zip(images, kept, strict=True):
            pixels = sample[0][0]
            canvas[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        boxes = torch.stack([s[0][1] for s in kept], dim=1)  # (V, B, 4)
        flips = torch.stack([s[0][2] for s in kept], dim=1)  # (V, B)
        g = self.num_global
        masks = None
        if mask_fn is not None:
            crop_size = (self.global_crop_size, self.global_crop_size)
            masks = draw_masks(mask_fn, g * len(kept), crop_size, patch_size, "CropPlan.collate")
        return CropSourceBatch(
            images=images,
            global_boxes=boxes[:g],
            local_boxes=boxes[g:],
            global_flips=flips[:g],
            local_flips=flips[g:],
            global_size=self.global_crop_size,
            local_size=self.local_crop_size,
            labels=torch.tensor([int(s[1]) for s in kept], dtype=torch.int64),
            masks=masks,
            num_skipped=len(samples) - len(kept),
        )
