"""Gaussian blur of PIL images (and of float ``(C, H, W)`` tensors) with a separable kernel.

The result is an exact Gaussian blur to uint8 rounding: the kernel is the sampled Gaussian, normalised,
truncated at 4 sigma (as ``scipy.ndimage.gaussian_filter``; the tail beyond holds under 1e-4 of the
weight, under 0.03 grey levels) or at the crop's largest kernel if that is smaller, with reflect padding
and rounding to the nearest level as ``torchvision.transforms.GaussianBlur``. (PIL's own
``ImageFilter.GaussianBlur`` approximates the Gaussian with box blurs, up to 11 grey levels off at small
sigma, and is slower on these crops.) Speed comes from running both 1-D passes on the flattened padded
image, so that every shifted operand is one contiguous slice, and from sizing the kernel by sigma: a
224-px crop gets as many taps as its sigma needs, not 23.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

TRUNCATE = 4.0  # kernel radius in sigmas


class GaussianBlur:
    """Blur a PIL image, or a float ``(C, H, W)`` tensor with any C, with a Gaussian of random sigma,
    truncated to ``kernel_size``.

    Args:
        kernel_size: odd side in pixels of the largest kernel; a smaller sigma gets a kernel of radius
            ``ceil(4 sigma)``.
        sigma: (min, max) standard deviation in pixels; each call draws one uniformly from ``torch``'s
            generator.
    """

    def __init__(self, kernel_size: int, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur kernel_size must be a positive odd number, got {kernel_size}")
        low, high = (float(s) for s in sigma)
        if not 0 < low <= high:
            raise ValueError(f"blur sigma range must satisfy 0 < min <= max, got ({low}, {high})")
        self.kernel_size = kernel_size
        self.sigma = (low, high)

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        if isinstance(image, torch.Tensor):
            pixels = image.float().permute(1, 2, 0).numpy()  # (H, W, C)
            blurred = _blur_array(pixels, self.kernel_size, sigma)
            return torch.from_numpy(np.ascontiguousarray(blurred.transpose(2, 0, 1)))
        return blur_pil(image, self.kernel_size, sigma)

    def __repr__(self) -> str:
        return f"GaussianBlur(kernel_size={self.kernel_size}, sigma={self.sigma})"


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    """The normalised float64 kernel :func:`blur_pil` applies along each axis: radius ``ceil(4 sigma)``,
    at most ``kernel_size // 2``."""
    radius = min(kernel_size // 2, math.ceil(TRUNCATE * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def blur_pil(image: Image.Image, kernel_size: int, sigma: float) -> Image.Image:
    """Blur an RGB (or L) PIL image with a fixed-sigma separable Gaussian kernel (reflect padding)."""
    weights = gaussian_kernel(kernel_size, sigma)
    radius = len(weights) // 2
    # The blurred value stays within (1 - centre weight) x 255 of the pixel's own; under half a level
    # (sigma below ~0.25) every pixel rounds back to itself.
    if 255 * (1 - weights[radius] ** 2) < 0.49:
        return image
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    channels = pixels.size // (height * width)
    padded = _reflect_pad(pixels.reshape(height, width, channels), radius)  # float32 (H+2r, W+2r, C)
    row = (width + 2 * radius) * channels
    # Along the flattened padded image, the horizontal neighbour i columns away is i x C elements on and
    # the vertical one i rows away i x row elements on: each pass is 1-D. The last 2r columns of every
    # output row mix two image rows and are dropped.
    rows = _correlate(padded.reshape(-1), weights, channels, padded.size - 2 * radius * channels)
    out = np.empty(height * row, dtype=np.float32)
    kept = _correlate(rows, weights, row, out.size - 2 * radius * channels, out=out)
    np.rint(kept, out=kept)  # a convex mix of uint8 levels: within [0, 255], no clipping needed
    blurred = out.reshape(height, width + 2 * radius, channels)[:, :width].astype(np.uint8)
    return Image.fromarray(blurred.reshape(pixels.shape))


def _reflect_pad(pixels: np.ndarray, radius: int) -> np.ndarray:
    """(H, W, C) uint8 -> (H + 2r, W + 2r, C) float32, mirrored about the edge pixels (reflect mode)."""
    height, width = pixels.shape[:2]
    if radius >= min(height, width):
        raise ValueError(f"blur radius {radius} needs an image larger than {width}x{height}")
    r = radius
    padded = np.empty((height + 2 * r, width + 2 * r, pixels.shape[2]), dtype=np.float32)
    padded[r : r + height, r : r + width] = pixels
    padded[r : r + height, :r] = padded[r : r + height, 2 * r : r : -1]
    padded[r : r + height, r + width :] = padded[r : r + height, r + width - 2 : width - 2 : -1]
    padded[:r] = padded[2 * r : r : -1]
    padded[r + height :] = padded[r + height - 2 : height - 2 : -1]
    return padded


def _correlate(
    src: np.ndarray, weights: np.ndarray, step: int, length: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``out[j] = sum_i weights[i] * src[j + i * step]`` for ``j < length``, with a symmetric kernel:
    each pair of mirrored taps costs one add, one scale and one accumulate on contiguous slices."""
    radius = len(weights) // 2
    w = weights.astype(np.float32)
    acc = np.empty(length, dtype=np.float32) if out is None else out[:length]
    np.multiply(src[radius * step : radius * step + length], w[radius], out=acc)
    pair = np.empty(length, dtype=np.float32)
    for i in range(1, radius + 1):
        before, after = (radius - i) * step, (radius + i) * step
        np.add(src[before : before + length], src[after : after + length], out=pair)
        pair *= w[radius + i]
        acc += pair
    return acc


def _blur_array(pixels: np.ndarray, kernel_size: int, sigma: float) -> np.ndarray:
    """Blur float32 ``(H, W, C)`` or ``(H, W)`` pixels (reflect padding, the kernel of
    :func:`gaussian_kernel`), unrounded: the path of float tensors from array files (any C)."""
    weights = gaussian_kernel(kernel_size, sigma).astype(np.float32)
    radius = len(weights) // 2
    pad = ((radius, radius), (radius, radius)) + ((0, 0),) * (pixels.ndim - 2)
    padded = np.pad(pixels, pad, mode="reflect")
    height, width = pixels.shape[:2]
    # Shifted multiply-adds beat torch.conv2d here: no dispatch overhead on small crops, and no
    # intra-op threads competing with the other DataLoader workers.
    rows = weights[0] * padded[:, :width]
    for i in range(1, len(weights)):
        rows += weights[i] * padded[:, i : i + width]
    out = weights[0] * rows[:height]
    for i in range(1, len(weights)):
        out += weights[i] * rows[i : i + height]
    return out


def blur_kernel_size(crop_size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the crop side (at least 3): 224 -> 23, 96 -> 11, 28 -> 3."""
    return max(3, round(0.1 * crop_size) | 1)
