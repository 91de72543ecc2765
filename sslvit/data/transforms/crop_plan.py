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
    """``image -> (uint8 (C, h, w), boxes (V, 4), flips (V,))`` with V = global then local views.

    The crops are resampled as 8-bit pictures (PIL's rounding), so the images are grey (``in_chans=1``)
    or RGB (``in_chans=3``) PIL images; array files of other depths or band counts take the other device
    stages.

    Args:
        global_crop_size / local_crop_size: output sides of the crops (made later, on the device).
        num_global_crops / num_local_crops: views per image.
        global_crop_scale / local_crop_scale: ``RandomResizedCrop`` area ranges.
        flip_p: horizontal-flip probability.
        max_side: images whose long side exceeds this are first shrunk to it (PIL bicubic, aspect
            kept); boxes are drawn on the shrunk image, so the area fractions are unchanged.
        in_chans: 1 (grey) or 3 (RGB).

    Raises:
        ValueError: ``max_side`` below the global crop size, or ``in_chans`` other than 1 or 3.
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
        in_chans: int = 3,
    ) -> None:
        if in_chans not in (1, 3):
            raise ValueError(
                f"device_stage=crops resamples 8-bit grey or RGB pictures, not {in_chans} channels: use "
                "data.transform.device_stage=photometric (or normalize / none) for multi-band images"
            )
        self.mode = "L" if in_chans == 1 else "RGB"
        if max_side < global_crop_size:
            raise ValueError(f"max_side {max_side} is smaller than the global crop size {global_crop_size}")
        self.global_crop_size, self.local_crop_size = int(global_crop_size), int(local_crop_size)
        self.num_global, self.num_local = int(num_global_crops), int(num_local_crops)
        self.scales = [global_crop_scale] * self.num_global + [local_crop_scale] * self.num_local
        self.flip_p = float(flip_p)
        self.max_side = int(max_side)

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"device_stage=crops resamples 8-bit pictures, got a {type(image).__name__} (an array file "
                "of more than 8 bits): use data.transform.device_stage=photometric for such data"
            )
        if image.mode != self.mode:
            image = image.convert(self.mode)
        if max(image.size) > self.max_side:
            shrink = self.max_side / max(image.size)
            size = (max(1, round(image.width * shrink)), max(1, round(image.height * shrink)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        boxes = []
        for scale in self.scales:
            top, left, height, width = T.RandomResizedCrop.get_params(image, list(scale), list(_RATIO))
            boxes.append((left, top, width, height))
        flips = torch.rand(len(self.scales)) < self.flip_p
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # one writable copy, (H, W[, 3])
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
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
        images = torch.zeros(len(kept), kept[0][0][0].shape[0], height, width, dtype=torch.uint8)
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
