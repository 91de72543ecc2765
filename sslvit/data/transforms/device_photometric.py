"""The multi-crop recipe's photometric half (colour jitter, grayscale, blur, solarise, normalise) on a
whole batch, on whatever device the batch is on.

The loader workers then only decode, crop, flip and hand over uint8 crops, and do about 1.9x more images
per core (docs/benchmarks.md); on a GPU these ops cost a few element-wise passes over the batch. Every
op draws its parameters *per sample*, as the per-image CPU transforms do, and matches torchvision's
definition (tests compare each op with ``torchvision.transforms.functional``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sslvit.data.transforms.blur import blur_kernel_size

_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma as torchvision's rgb_to_grayscale rounds it


@dataclass(frozen=True)
class PhotometricRecipe:
    """One view's photometric settings (the ``MultiCropTransform`` arguments of that view)."""

    color_jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue strengths
    color_jitter_p: float
    grayscale_p: float
    blur_p: float
    blur_sigma: tuple[float, float]
    solarize_p: float
    mean: tuple[float, ...]  # one value per channel
    std: tuple[float, ...]


def grayscale(x: Tensor) -> Tensor:
    """(B,3,H,W) in [0,1] -> (B,1,H,W) luma, with torchvision's formula (the weights are Python numbers:
    a weight tensor made from them would be copied from the host, which makes a GPU host wait)."""
    r, g, b = x.unbind(1)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)


def luma(x: Tensor) -> Tensor:
    """``(B, 1, H, W)`` brightness that contrast blends towards: RGB luma (:func:`grayscale`) of 3
    channels, the plain channel mean of any other count (torchvision's choice for one channel)."""
    return grayscale(x) if x.shape[1] == 3 else x.mean(1, keepdim=True)


def per_channel(x: Tensor, values: Sequence[float]) -> Tensor:
    """``(1, C, 1, 1)`` constant on ``x``'s device, filled there value by value (no host-to-device copy)."""
    out = x.new_empty(1, len(values), 1, 1)
    for channel, value in enumerate(values):
        out[0, channel] = value
    return out


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x), factor.view(-1, 1, 1, 1))


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor.view(-1, 1, 1, 1))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(x, grayscale(x), factor.view(-1, 1, 1, 1))


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by ``shift`` (fraction of a turn, in [-0.5, 0.5]) per sample, through HSV."""
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    low, _ = x.min(1)
    chroma = value - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift.view(-1, 1, 1)) % 1.0
    saturation = torch.where(value > 0, chroma / torch.where(value > 0, value, torch.ones_like(value)), value)
    # HSV -> RGB: channel n takes v - v s max(0, min(k, 4 - k, 1)), k = (n + 6 h) mod 6, n = 5, 3, 1.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6) % 6
        channels.append(value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, 1)


def gaussian_blur(x: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per sample (reflect padding, as torchvision)."""
    batch, channels, height, width = x.shape
    radius = kernel_size // 2
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - radius
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(channels, 0)  # (B*C, k)
    flat = x.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, kernel_size), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, kernel_size, 1), groups=batch * channels)
    return flat.view(batch, channels, height, width)


def solarize(x: Tensor) -> Tensor:
    """Invert the pixels at or above half intensity (torchvision's threshold 128 on uint8)."""
    return torch.where(x >= 128 / 255, 1 - x, x)


class DevicePhotometric:
    """Apply one view's photometric recipe to a batch of uint8 crops, per-sample random, on its device.

    Same sequence as the CPU view: colour jitter (probability ``color_jitter_p``; brightness, contrast,
    saturation and hue factors uniform in torchvision's ranges, applied in a random order per sample),
    grayscale, Gaussian blur (sigma uniform in ``blur_sigma``, kernel ~10% of the crop side),
    solarisation, then normalisation. Crops may have any channel count when the recipe's saturation,
    hue and greyscale are off (:func:`~sslvit.data.channels.colour_ops`); uint8 crops are scaled by
    1/255, float crops are taken as [0, 1] values. Draws come from ``generator`` (seeded by the caller
    per step, so a resumed run repeats them).
    """

    def __init__(self, recipe: PhotometricRecipe) -> None:
        self.recipe = recipe

    def __call__(self, crops: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r = self.recipe
        x = crops.float() / 255 if crops.dtype == torch.uint8 else crops.float()
        batch = x.shape[0]

        def uniform(low: float, high: float) -> Tensor:
            return torch.rand(batch, device=x.device, generator=generator) * (high - low) + low

        def chosen(p: float) -> Tensor:
            return (torch.rand(batch, device=x.device, generator=generator) < p).view(-1, 1, 1, 1)

        b, c, s, h = r.color_jitter
        factors = (uniform(max(0.0, 1 - b), 1 + b), uniform(max(0.0, 1 - c), 1 + c),
                   uniform(max(0.0, 1 - s), 1 + s), uniform(-h, h))  # fmt: skip
        # A uniformly random order of the four ops per sample (argsort of i.i.d. uniforms), on the device.
        order = torch.rand(batch, 4, device=x.device, generator=generator).argsort(dim=1)
        jitter = chosen(r.color_jitter_p)
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        enabled = (b > 0, c > 0, s > 0, h > 0)
        # Each op runs on the whole batch and torch.where keeps it for the samples whose order puts it at this
        # position: 4x the element-wise work of gathering them, but no data-dependent shapes (no host sync).
        for position in range(4):
            for op_id, (op, factor) in enumerate(zip(ops, factors, strict=True)):
                if not enabled[op_id]:
                    continue
                here = jitter & (order[:, position] == op_id).view(-1, 1, 1, 1)
                x = torch.where(here, op(x, factor), x)
        to_grey = chosen(r.grayscale_p)  # drawn at any p, so every channel count draws alike
        if r.grayscale_p > 0:
            x = torch.where(to_grey, grayscale(x).expand_as(x), x)
        if r.blur_p > 0:
            sigma = uniform(*r.blur_sigma)
            blurred = gaussian_blur(x, blur_kernel_size(x.shape[-1]), sigma)
            x = torch.where(chosen(r.blur_p), blurred, x)
        if r.solarize_p > 0:
            x = torch.where(chosen(r.solarize_p), solarize(x), x)
        return (x - per_channel(x, r.mean)) / per_channel(x, r.std)


class DeviceMultiCrop:
    """The photometric half of a multi-crop batch: global view 1's recipe, global views 2..'s, the locals'."""

    def __init__(self, recipes: tuple[PhotometricRecipe, PhotometricRecipe, PhotometricRecipe]) -> None:
        self.global_1, self.global_2, self.local = (DevicePhotometric(r) for r in recipes)

    def __call__(
        self, global_crops: list[Tensor], local_crops: list[Tensor], generator: torch.Generator | None = None
    ) -> tuple[list[Tensor], list[Tensor]]:
        globals_out = [self.global_1(global_crops[0], generator)]
        globals_out += [self.global_2(x, generator) for x in global_crops[1:]]
        return globals_out, [self.local(x, generator) for x in local_crops]


def recipes_of(
    color_jitter: Sequence[float],
    color_jitter_p: float,
    grayscale_p: float,
    blur_p: Sequence[float],
    blur_sigma: Sequence[float],
    solarize_p: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[PhotometricRecipe, PhotometricRecipe, PhotometricRecipe]:
    """The (global view 1, global views 2.., local views) recipes of a multi-crop configuration."""

    def one(blur: float, solar: float) -> PhotometricRecipe:
        return PhotometricRecipe(
            color_jitter=tuple(float(v) for v in color_jitter),  # type: ignore[arg-type]
            color_jitter_p=float(color_jitter_p),
            grayscale_p=float(grayscale_p),
            blur_p=float(blur),
            blur_sigma=(float(blur_sigma[0]), float(blur_sigma[1])),
            solarize_p=float(solar),
            mean=tuple(float(m) for m in mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in std),  # type: ignore[arg-type]
        )

    return one(blur_p[0], 0.0), one(blur_p[1], solarize_p), one(blur_p[2], 0.0)
