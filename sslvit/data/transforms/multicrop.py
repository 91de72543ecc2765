"""DINO multi-crop augmentation: a few large "global" views and several small "local" views per image."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from torch import Tensor
from torchvision import transforms as T

from sslvit.data.batch import CropSourceBatch, MultiCropBatch
from sslvit.data.channels import channel_values, check_in_chans, colour_ops
from sslvit.data.collate import MaskFn, collate_multicrop
from sslvit.data.transforms.blur import GaussianBlur, blur_kernel_size
from sslvit.data.transforms.channel_ops import Solarize, ToViewTensor, colour_jitter
from sslvit.data.transforms.crop_plan import CropPlan
from sslvit.data.transforms.device_normalize import DeviceNormalize
from sslvit.data.transforms.device_photometric import DeviceMultiCrop, recipes_of
from sslvit.data.transforms.train_transform import DEVICE_STAGES, TrainTransform, check_device_stage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)


class MultiCropTransform(TrainTransform):
    """Multi-crop views with the DINO / iBOT photometric recipe (Caron et al., 2021, arXiv:2104.14294).

    Every view: RandomResizedCrop (bicubic), horizontal flip, colour jitter with probability
    ``color_jitter_p``, grayscale with probability ``grayscale_p``, Gaussian blur, normalisation. The
    views differ in blur and solarisation, as in the paper: global view 1 is always blurred (p 1.0),
    global view 2 rarely (p 0.1) but may be solarised (p 0.2), local views are blurred with p 0.5
    (DINOv2's config sets 0.0 / 0.9 / 0.5, what its official code applies). The blur
    (:class:`~sslvit.data.transforms.blur.GaussianBlur`) is an exact separable Gaussian, its kernel cut
    at 4 sigma and at most about 10% of the crop's side (as in SimCLR / BYOL).

    Images may be PIL pictures (grey or RGB, 8-bit) or ``(C, H, W)`` float tensors in [0, 1] from array
    files (any C, :mod:`~sslvit.data.transforms.channel_ops`). With ``in_chans`` other than 3, the
    RGB-only colour ops (saturation, hue, greyscale) are off, and one log line at construction says so
    (:func:`~sslvit.data.channels.colour_ops`).

    Args:
        global_crop_size: side of the global crops (the teacher's input; 224 in the paper).
        local_crop_size: side of the local crops (96 for patch 16).
        num_local_crops: number of local crops (10 in DINO / iBOT; 0 allowed).
        global_crop_scale: RandomResizedCrop area range of the global crops ((0.4, 1) DINO, (0.32, 1) iBOT).
        local_crop_scale: area range of the local crops ((0.05, 0.4) DINO, (0.05, 0.32) iBOT).
        mean: per-channel normalisation mean (one value per channel, or one for all).
        std: per-channel normalisation std (likewise).
        flip_p: horizontal-flip probability.
        color_jitter: (brightness, contrast, saturation, hue) strengths.
        color_jitter_p: probability of applying the colour jitter.
        grayscale_p: probability of converting to grayscale (kept 3-channel; RGB only).
        blur_p: blur probability for (global view 1, global views 2.., local views); DINO's
            (1.0, 0.1, 0.5) by default, (0.0, 0.9, 0.5) in DINOv2's config.
        solarize_p: solarisation probability of global views 2.. (global view 1 is never solarised).
        blur_sigma: Gaussian sigma range in pixels.
        num_global_crops: number of global crops (2 in the paper; view 1 gets the first recipe, the
            others the second).
        device_stage: how much of the recipe runs per batch on the training device (after the
            DataModule moved the batch there) instead of in the loader workers, each stage including
            the previous one. ``none``: the workers hand over normalised float crops. ``normalize``:
            they run the whole recipe but stop at uint8 crops, converted and normalised on the device
            (:class:`~sslvit.data.transforms.device_normalize.DeviceNormalize`): a quarter of the bytes
            to move, same values. ``photometric``: they only crop and flip; colour jitter, grayscale,
            blur and solarisation run on the device too
            (:class:`~sslvit.data.transforms.device_photometric.DevicePhotometric`), for GPUs whose
            loader cannot keep up. ``crops``: they only decode and draw the crop boxes and flips
            (:class:`~sslvit.data.transforms.crop_plan.CropPlan`); the crops are cut and resampled on
            the device too (PIL's antialiased bicubic, :mod:`~sslvit.data.transforms.device_crops`).
        max_side: with ``device_stage="crops"``, larger images are first shrunk to this long side in
            the worker (None: 16/7 of the global crop size, 512 for 224, so that even a global crop of
            the smallest area is not upsampled).
        in_chans: channels of the images (``data.in_chans``).

    Returns (from ``__call__``):
        ``(global_crops, local_crops)``: lists of normalised float tensors (C, H, W) with
        ``device_stage="none"``, of uint8 tensors (float in [0, 1] for tensor images) with
        ``normalize`` or ``photometric``; with
        ``crops``, ``(image, boxes, flips)``, which :meth:`collate` stacks into a
        :class:`~sslvit.data.batch.CropSourceBatch`.

    Raises:
        ValueError: an unknown ``device_stage``, crop counts below 1 global / 0 local, a ``blur_p``
            without 3 probabilities, or ``mean`` / ``std`` that give neither one value nor
            ``in_chans`` values.
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
        num_local_crops: int = 10,
        global_crop_scale: Sequence[float] = (0.4, 1.0),
        local_crop_scale: Sequence[float] = (0.05, 0.4),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_p: float = 0.5,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: Sequence[float] = (1.0, 0.1, 0.5),
        solarize_p: float = 0.2,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        num_global_crops: int = 2,
        device_stage: str = "normalize",
        max_side: int | None = None,
        in_chans: int = 3,
    ) -> None:
        self.device_stage = check_device_stage(device_stage)
        self.in_chans = check_in_chans(in_chans)
        mean = channel_values(mean, self.in_chans, "data.transform.mean")
        std = channel_values(std, self.in_chans, "data.transform.std")
        colour = colour_ops(self.in_chans, color_jitter, grayscale_p)
        if colour.note:
            log.info("multi-crop views: %s", colour.note)
        color_jitter, grayscale_p = colour.color_jitter, colour.grayscale_p
        if num_global_crops < 1 or num_local_crops < 0:
            raise ValueError(
                f"need num_global_crops >= 1 and num_local_crops >= 0, "
                f"got {num_global_crops} and {num_local_crops}"
            )
        if len(blur_p) != 3:
            raise ValueError(f"blur_p needs 3 probabilities (global 1, global 2, locals), got {list(blur_p)}")
        self.global_crop_size = int(global_crop_size)
        self.local_crop_size = int(local_crop_size)
        self.num_global_crops = int(num_global_crops)
        self.num_local_crops = int(num_local_crops)
        # Hydra hands lists as ListConfig; plain tuples keep the transforms picklable and printable.
        sigma = _pair(blur_sigma)
        global_scale, local_scale = _pair(global_crop_scale), _pair(local_crop_scale)
        common = dict(
            flip_p=flip_p,
            jitter=colour_jitter(self.in_chans, colour.color_jitter),
            jitter_p=color_jitter_p,
            # Only RGB has a greyscale op; other counts leave the step out (no draw either).
            grayscale_p=grayscale_p if self.in_chans == 3 else None,
            sigma=sigma,
            normalize=T.Normalize(mean, std),
        )
        on_device = DEVICE_STAGES.index(self.device_stage)
        # The workers' half when the crops are cut on the device; its collate makes a CropSourceBatch.
        self.crop_plan: CropPlan | None = None
        if self.device_stage == "crops":
            self.crop_plan = CropPlan(
                self.global_crop_size, self.local_crop_size, self.num_global_crops, self.num_local_crops,
                global_scale, local_scale, flip_p,
                max_side=int(max_side) if max_side else -(-self.global_crop_size * 16 // 7),
                in_chans=self.in_chans,
            )  # fmt: skip
            # Every image is shrunk to the plan's long side: the JPEG decoder may do most of that.
            self.decode_max_side = self.crop_plan.max_side
        self.device_ops: DeviceMultiCrop | DeviceNormalize | None = None
        if on_device >= DEVICE_STAGES.index("photometric"):
            self.device_ops = DeviceMultiCrop(
                recipes_of(color_jitter, color_jitter_p, grayscale_p, blur_p, sigma, solarize_p, mean, std)
            )
            self.global_view_1 = _geometric_view(self.global_crop_size, global_scale, flip_p)
            self.global_view_2 = self.global_view_1
            self.local_view = _geometric_view(self.local_crop_size, local_scale, flip_p)
            return
        if self.device_stage == "normalize":
            common["normalize"] = None
            self.device_ops = DeviceNormalize(mean, std)
        self.global_view_1 = _view(self.global_crop_size, global_scale, blur_p[0], 0.0, **common)
        self.global_view_2 = _view(self.global_crop_size, global_scale, blur_p[1], solarize_p, **common)
        self.local_view = _view(self.local_crop_size, local_scale, blur_p[2], 0.0, **common)

    @property
    def crop_sizes(self) -> Mapping[str, int]:
        return {"global_crop_size": self.global_crop_size, "local_crop_size": self.local_crop_size}

    def collate(
        self, samples: Sequence[Any], mask_fn: MaskFn | None = None, patch_size: int | None = None
    ) -> MultiCropBatch | CropSourceBatch:
        """:func:`~sslvit.data.collate.collate_multicrop`, or the crop plan's collate with
        ``device_stage="crops"``."""
        if self.crop_plan is not None:
            return self.crop_plan.collate(samples, mask_fn, patch_size)
        return collate_multicrop(samples, mask_fn, patch_size)

    def __call__(self, image: Image.Image | Tensor) -> Any:
        if self.crop_plan is not None:
            return self.crop_plan(image)
        global_crops = [self.global_view_1(image)]
        global_crops += [self.global_view_2(image) for _ in range(self.num_global_crops - 1)]
        local_crops = [self.local_view(image) for _ in range(self.num_local_crops)]
        return global_crops, local_crops

    def __repr__(self) -> str:
        return (
            f"MultiCropTransform({self.num_global_crops}x{self.global_crop_size}px + "
            f"{self.num_local_crops}x{self.local_crop_size}px)\n  global 1: {self.global_view_1}\n"
            f"  global 2: {self.global_view_2}\n  local: {self.local_view}"
            + (f"\n  then on the device: {type(self.device_ops).__name__}" if self.device_ops else "")
        )


def _geometric_view(size: int, scale: tuple[float, float], flip_p: float) -> T.Compose:
    """Crop and flip only, uint8 out (the photometric half runs on the device)."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=flip_p),
            ToViewTensor(None),
        ]
    )


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    return low, high


def _view(
    size: int,
    scale: tuple[float, float],
    blur_p: float,
    solarize_p: float,
    *,
    flip_p: float,
    jitter: object,
    jitter_p: float,
    grayscale_p: float | None,
    sigma: tuple[float, float],
    normalize: T.Normalize | None,
) -> T.Compose:
    steps: list[object] = [
        T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_p),
        T.RandomApply([jitter], p=jitter_p),
    ]
    if grayscale_p is not None:
        steps.append(T.RandomGrayscale(p=grayscale_p))
    if blur_p > 0:
        steps.append(T.RandomApply([GaussianBlur(blur_kernel_size(size), sigma=sigma)], p=blur_p))
    if solarize_p > 0:
        steps.append(Solarize(p=solarize_p))
    # None: stop at uint8 (device_stage="normalize"), the DataModule normalises after the transfer.
    steps.append(ToViewTensor(normalize))
    return T.Compose(steps)
