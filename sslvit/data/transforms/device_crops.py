"""Random-resized crops cut and resampled on the training device, with PIL's antialiased bicubic filter.

With ``device_stage="crops"`` the loader workers only decode each image, draw the crop boxes and flips, and
hand over the whole image; here every crop of a batch is resampled at once. The resampling is PIL's
(what ``RandomResizedCrop`` runs on the CPU): for each output pixel a bicubic kernel (a = -0.5) widened
by the downscaling factor, truncated at the crop's edges and normalised, applied horizontally then
vertically. Written as two batched matrix products per crop size, ``W_y @ image @ W_x^T``, with the
weight matrices built on the device from the boxes: one GEMM-shaped kernel instead of a resize call per
crop, and no data-dependent shapes (no host sync). Both passes round and clip to 8 bits as PIL's do, so
the crops equal torchvision's PIL crops within one grey level (PIL's fixed-point weights). Pillow 13
runs the vertical pass first when the height shrinks over twice as much as the width; those crops differ
by a few levels where the clipped overshoot of sharp edges lands differently
(tests/data/test_device_crops.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sslvit.data.batch import CropSourceBatch, MultiCropBatch


def bicubic(x: Tensor, a: float = -0.5) -> Tensor:
    """PIL's bicubic convolution kernel (Keys, 1981), zero outside (-2, 2)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(start: Tensor, length: Tensor, out_size: int, in_size: int) -> Tensor:
    """``(K, out_size, in_size)`` weights taking pixels ``[start, start + length)`` of an axis to out_size.

    PIL's ``precompute_coeffs`` for a crop: output pixel ``i`` centres at ``start + (i + 0.5) * scale``
    (``scale = length / out_size``), the kernel is stretched by ``max(scale, 1)`` (antialiasing when
    shrinking), pixels outside the crop get no weight and each row is normalised to sum to one.
    """
    start, length = start.float().view(-1, 1, 1), length.float().view(-1, 1, 1)
    scale = length / out_size
    stretch = scale.clamp(min=1.0)
    centre = (torch.arange(out_size, device=start.device).view(1, -1, 1) + 0.5) * scale  # crop coordinates
    pixel = torch.arange(in_size, device=start.device).view(1, 1, -1) - start  # pixel j, crop coordinates
    weights = bicubic((pixel + 0.5 - centre) / stretch)
    weights = torch.where((pixel >= 0) & (pixel < length), weights, torch.zeros_like(weights))
    return weights / weights.sum(-1, keepdim=True)


def crop_resize(images: Tensor, boxes: Tensor, flips: Tensor, size: int) -> list[Tensor]:
    """Crops of ``images`` resampled to ``size`` x ``size``, one uint8 ``(B, C, size, size)`` per view.

    Args:
        images: ``(B, C, H, W)`` uint8, each image in its top-left corner (the rest is never read).
        boxes: ``(V, B, 4)`` crop boxes ``(left, top, width, height)`` in pixels, V views per image.
        flips: ``(V, B)`` bool, flip that crop horizontally.
    """
    views, batch = boxes.shape[:2]
    if views == 0:
        return []
    _, channels, height, width = images.shape
    source = images.float()
    boxes = boxes.transpose(0, 1).reshape(batch * views, 4)  # image-major: crop k = (image k // V, view)
    w_x = resample_weights(boxes[:, 0], boxes[:, 2], size, width).view(batch, views * size, width)
    w_y = resample_weights(boxes[:, 1], boxes[:, 3], size, height)  # (B*V, size, H)
    # Horizontal pass: (B, C*H, W) @ (B, W, V*size) -> every view of an image in one product.
    rows = torch.bmm(source.reshape(batch, channels * height, width), w_x.transpose(1, 2))
    rows = rows.round().clamp(0, 255)  # PIL stores the horizontal pass as 8 bits: overshoot is clipped
    rows = rows.view(batch, channels, height, views, size).permute(0, 3, 2, 1, 4)  # (B, V, H, C, size)
    rows = rows.reshape(batch * views, height, channels * size)
    # Vertical pass: (B*V, size, H) @ (B*V, H, C*size).
    crops = torch.bmm(w_y, rows).view(batch, views, size, channels, size).permute(1, 0, 3, 2, 4)
    crops = torch.where(flips.view(views, batch, 1, 1, 1), crops.flip(-1), crops)
    crops = crops.round().clamp(0, 255).to(torch.uint8)
    return list(crops.unbind(0))


def crop_sources(batch: CropSourceBatch) -> MultiCropBatch:
    """The uint8 multi-crop batch that the workers would have made (photometric ops still to run)."""
    return MultiCropBatch(
        global_crops=crop_resize(batch.images, batch.global_boxes, batch.global_flips, batch.global_size),
        local_crops=crop_resize(batch.images, batch.local_boxes, batch.local_flips, batch.local_size),
        labels=batch.labels,
        masks=batch.masks,
        num_skipped=batch.num_skipped,
        mask_indices=batch.mask_indices,
    )
