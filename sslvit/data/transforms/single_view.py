"""One augmented crop per image: BEiT's two-resolution view pair, and a plain crop for tokenizer training."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from sslvit.data.batch import MaskedImageBatch
from sslvit.data.channels import channel_values, check_in_chans, colour_ops
from sslvit.data.collate import MaskFn, collate_views
from sslvit.data.transforms.channel_ops import ImageLike, colour_jitter, to_unit_tensor
from sslvit.data.transforms.multicrop import IMAGENET_MEAN, IMAGENET_STD
from sslvit.data.transforms.train_transform import TrainTransform

log = logging.getLogger(__name__)

# Multi-crop options that the data configs set under `transform:` for DINO-style methods (crop counts,
# local crops, per-view blur / solarisation). A single-crop transform has no use for them; they are
# accepted, so one data config serves every method, and ignored. Any other unknown key is an error.
MULTICROP_ONLY_OPTIONS = frozenset(
    {
        "local_crop_size",
        "num_local_crops",
        "local_crop_scale",
        "num_global_crops",
        "blur_p",
        "blur_sigma",
        "solarize_p",
        "grayscale_p",
    }
)


def _check_ignored(owner: str, options: dict[str, object]) -> None:
    unknown = sorted(set(options) - MULTICROP_ONLY_OPTIONS)
    if unknown:
        raise TypeError(f"{owner} got unexpected options: {', '.join(unknown)}")


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    return low, high


class _OneCropTransform(TrainTransform):
    """One view per image for the ViT (plus, for BEiT, the tokenizer's view of the same crop)."""

    global_crop_size: int

    @property
    def crop_sizes(self) -> Mapping[str, int]:
        return {"global_crop_size": self.global_crop_size}

    def collate(
        self, samples: Sequence[Any], mask_fn: MaskFn | None = None, patch_size: int | None = None
    ) -> MaskedImageBatch:
        """:func:`~sslvit.data.collate.collate_views`: a :class:`~sslvit.data.batch.MaskedImageBatch`."""
        return collate_views(samples, mask_fn, patch_size)


class BEiTTransform(_OneCropTransform):
    """The two views of one crop that BEiT pretraining reads (Bao et al., 2022, arXiv:2106.08254).

    RandomResizedCrop parameters are drawn once; after the shared flip and colour jitter the crop is
    resized twice: to ``global_crop_size`` (bicubic, mean/std normalised) for the ViT, and to the
    resolution whose token grid equals the ViT patch grid (Lanczos, pixels in [0, 1]) for the tokenizer:
    ``global_crop_size / patch_size * tokenizer_downsample`` (224 / 16 * 8 = 112 for DALL-E's tokenizer).
    Tensor images (array files, any channel count) are resampled with antialiased bicubic for both
    views (torchvision has no Lanczos for tensors); with ``in_chans`` other than 3 the jitter keeps
    brightness and contrast only (:func:`~sslvit.data.channels.colour_ops`, logged once).

    Args:
        global_crop_size: side of the ViT view.
        patch_size: ViT patch size (the configs pass ``backbone.patch_size``).
        tokenizer_downsample: pixels per token of the tokenizer (8 for DALL-E's dVAE).
        global_crop_scale: RandomResizedCrop area range.
        mean / std: normalisation of the ViT view.
        flip_p: horizontal-flip probability.
        color_jitter: (brightness, contrast, saturation, hue) strengths.
        color_jitter_p: probability of applying the colour jitter.
        in_chans: channels of the images (``data.in_chans``).
        **multicrop_options: multi-crop keys of the data configs (``MULTICROP_ONLY_OPTIONS``), ignored.

    Returns (from ``__call__``):
        ``(vit_view (C, S, S) normalised, tokenizer_view (C, s, s) in [0, 1])``.
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        patch_size: int = 16,
        tokenizer_downsample: int = 8,
        global_crop_scale: Sequence[float] = (0.08, 1.0),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_p: float = 0.5,
        color_jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.0),
        color_jitter_p: float = 0.8,
        in_chans: int = 3,
        **multicrop_options: object,
    ) -> None:
        _check_ignored(type(self).__name__, multicrop_options)
        self.in_chans = check_in_chans(in_chans)
        if global_crop_size % patch_size:
            raise ValueError(
                f"global_crop_size {global_crop_size} is not a multiple of patch_size {patch_size}"
            )
        if tokenizer_downsample < 1:
            raise ValueError(f"tokenizer_downsample must be >= 1, got {tokenizer_downsample}")
        self.global_crop_size = int(global_crop_size)
        self.tokenizer_crop_size = self.global_crop_size // int(patch_size) * int(tokenizer_downsample)
        self.scale = _pair(global_crop_scale)
        self.flip = T.RandomHorizontalFlip(p=flip_p)
        colour = colour_ops(self.in_chans, color_jitter)
        if colour.note:
            log.info("BEiT view: %s", colour.note)
        self.jitter = T.RandomApply([colour_jitter(self.in_chans, colour.color_jitter)], p=color_jitter_p)
        self.normalize = T.Normalize(
            channel_values(mean, self.in_chans, "data.transform.mean"),
            channel_values(std, self.in_chans, "data.transform.std"),
        )

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.jitter(self.flip(image))
        top, left, height, width = T.RandomResizedCrop.get_params(image, self.scale, (3 / 4, 4 / 3))
        size, tok_size = self.global_crop_size, self.tokenizer_crop_size
        vit = TF.resized_crop(image, top, left, height, width, [size, size], T.InterpolationMode.BICUBIC)
        # Lanczos as BEiT's official code for pictures; tensors have no Lanczos: bicubic, clipped.
        tok_filter = (
            T.InterpolationMode.LANCZOS if isinstance(image, Image.Image) else T.InterpolationMode.BICUBIC
        )
        tok = to_unit_tensor(
            TF.resized_crop(image, top, left, height, width, [tok_size, tok_size], tok_filter)
        )
        return self.normalize(to_unit_tensor(vit)), tok if isinstance(image, Image.Image) else tok.clamp(0, 1)

    def __repr__(self) -> str:
        return (
            f"BEiTTransform(vit {self.global_crop_size}px, tokenizer {self.tokenizer_crop_size}px, "
            f"scale={self.scale}, {self.flip}, {self.jitter})"
        )


class SingleCropTransform(_OneCropTransform):
    """RandomResizedCrop + horizontal flip, pixels in [0, 1]: the training view of a pixel tokenizer.

    A discrete VAE (BEiT's tokenizer, trained as in DALL-E) reconstructs pixels, so its view is not
    normalised unless ``normalize`` is set.

    Args:
        global_crop_size: side of the crop.
        global_crop_scale: RandomResizedCrop area range.
        flip_p: horizontal-flip probability.
        normalize: apply ``mean`` / ``std`` (off: [0, 1] pixels).
        mean / std: normalisation used when ``normalize`` is on.
        in_chans: channels of the images (``data.in_chans``).
        **multicrop_options: multi-crop keys of the data configs (``MULTICROP_ONLY_OPTIONS``), ignored.

    Returns (from ``__call__``):
        ``(view (C, S, S), None)``: no tokenizer view.
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        global_crop_scale: Sequence[float] = (0.08, 1.0),
        flip_p: float = 0.5,
        normalize: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        in_chans: int = 3,
        **multicrop_options: object,
    ) -> None:
        _check_ignored(type(self).__name__, multicrop_options)
        self.in_chans = check_in_chans(in_chans)
        self.global_crop_size = int(global_crop_size)
        steps: list[object] = [
            T.RandomResizedCrop(
                self.global_crop_size,
                scale=_pair(global_crop_scale),
                interpolation=T.InterpolationMode.BICUBIC,
            ),
            T.RandomHorizontalFlip(p=flip_p),
            to_unit_tensor,
        ]
        if normalize:
            steps.append(
                T.Normalize(
                    channel_values(mean, self.in_chans, "data.transform.mean"),
                    channel_values(std, self.in_chans, "data.transform.std"),
                )
            )
        self.transform = T.Compose(steps)
        self.normalize = bool(normalize)

    def __call__(self, image: ImageLike) -> tuple[torch.Tensor, None]:
        # PIL resamples in uint8: pixels stay in [0, 1]. Tensors keep the bicubic overshoot, which a
        # pixel tokenizer's reconstruction target does not need: clipped when not normalised.
        view = self.transform(image)
        return (view if self.normalize or isinstance(image, Image.Image) else view.clamp(0, 1)), None

    def __repr__(self) -> str:
        return f"SingleCropTransform({self.transform})"
