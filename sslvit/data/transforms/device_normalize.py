"""The multi-crop recipe's last step, ``ToTensor`` + ``Normalize``, per batch on the training device.

With ``device_stage="normalize"`` the loader workers hand over uint8 crops: a quarter of the bytes through
the workers' shared memory, the pinned buffers and the host-to-device copy (a DINOv2 batch of 128 with
2 x 224 + 8 x 98 crops: 68 MB instead of 272 MB a step; ``benchmarks.data`` measures it). Every
photometric op of the CPU recipe works on 8-bit PIL images, so nothing is lost by stopping before the
conversion to float.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sslvit.data.transforms.device_photometric import per_channel


class DeviceNormalize:
    """uint8 crops ``(B, C, H, W)`` -> float32 ``(x / 255 - mean) / std``, as torchvision's ``ToTensor``
    then ``Normalize`` compute it per image (bit for bit on the CPU). Float crops (from array files,
    already in [0, 1]) skip the division by 255."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std):
            raise ValueError(f"mean and std need one value per channel, got {list(mean)} and {list(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def normalize(self, crops: Tensor) -> Tensor:
        if crops.dtype == torch.uint8:
            x = crops.float().div_(255)
        elif crops.is_floating_point():
            x = crops.float().clone()  # the in-place ops below must not write into the batch
        else:
            raise TypeError(f"DeviceNormalize expects uint8 or float crops, got {crops.dtype}")
        return x.sub_(per_channel(x, self.mean)).div_(per_channel(x, self.std))

    def __call__(
        self, global_crops: list[Tensor], local_crops: list[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Same interface as ``DeviceMultiCrop`` (``generator`` unused: nothing is random here)."""
        return [self.normalize(x) for x in global_crops], [self.normalize(x) for x in local_crops]

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std})"
