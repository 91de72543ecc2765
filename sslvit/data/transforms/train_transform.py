"""What the DataModule needs from a pretraining transform, and the one switch for its device half."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, cast, get_args

import torch
from PIL import Image
from torch import Tensor

from sslvit.data.collate import MaskFn

# How much of the multi-crop recipe runs per batch on the training device instead of in the loader
# workers, each stage including the previous one: none; normalize (uint8 crops cross to the device, a
# quarter of the bytes, and are normalised there); photometric (colour jitter, grayscale, blur and
# solarisation too); crops (the workers only decode and draw the crop boxes; cutting and resampling too).
DeviceStage = Literal["none", "normalize", "photometric", "crops"]
DEVICE_STAGES: tuple[DeviceStage, ...] = get_args(DeviceStage)


def check_device_stage(stage: str) -> DeviceStage:
    """``stage`` as a :data:`DeviceStage`; a ValueError naming the choices for anything else."""
    if stage not in DEVICE_STAGES:
        raise ValueError(
            f"data.transform.device_stage must be one of {', '.join(DEVICE_STAGES)}, got {stage!r}"
        )
    return cast(DeviceStage, stage)


class DeviceOps(Protocol):
    """The ops a transform leaves for the training device, run per batch after the transfer."""

    def __call__(
        self, global_crops: list[Tensor], local_crops: list[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]: ...


class TrainTransform(ABC):
    """A pretraining transform, as :class:`~sslvit.data.datamodule.SSLDataModule` uses it.

    The loader workers call it on every image and stack the samples with :meth:`collate`; after a
    batch reaches the training device the DataModule runs :attr:`device_ops` on it, if any.

    Attributes:
        device_ops: the ops left for the training device (None: the workers did everything).
        decode_max_side: the transform first shrinks every image to this long side, so a dataset may
            decode images down to it (a JPEG decoder's reduced scales); None: it needs the full image.
    """

    device_ops: DeviceOps | None = None
    decode_max_side: int | None = None

    @property
    @abstractmethod
    def crop_sizes(self) -> Mapping[str, int]:
        """The sides of the views the ViT reads, by option name: each a multiple of the patch size."""

    @abstractmethod
    def __call__(self, image: Image.Image) -> Any:
        """The views of one image, which :meth:`collate` stacks."""

    @abstractmethod
    def collate(
        self, samples: Sequence[Any], mask_fn: MaskFn | None = None, patch_size: int | None = None
    ) -> Any:
        """Stack ``(views, label)`` samples (None: unreadable, dropped and counted) into a typed batch,
        with masks from ``mask_fn`` on the patch grid of the views when it is given."""
