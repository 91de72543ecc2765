"""Read multi-band arrays (``.npy``, multi-page or multi-sample ``.tif`` / ``.tiff``) as images.

Pictures (JPEG, PNG, ...) hold 8-bit grey or RGB; arrays hold any number of bands in any dtype (16-bit
sensors, float reflectances). They are read as numbers (NumPy for ``.npy``, ``tifffile`` for TIFF: it
reads multi-page, multi-sample, 16-bit and float TIFFs that Pillow decodes partly or not at all),
arranged channels first and scaled to [0, 1] by one of :data:`SCALE_RULES`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal, cast, get_args

import numpy as np
import torch
from PIL import Image, ImageSequence

ARRAY_EXTENSIONS = (".npy", ".tif", ".tiff")

# How stored values become [0, 1] (``data.scale``):
#   dtype_max   integers divided by their type's largest value (uint8 255, uint16 65535; negative
#               values of signed types clip to 0); floats taken as they are (already in [0, 1])
#   min_max     per image and band: the band's minimum -> 0, its maximum -> 1 (a constant band -> 0)
#   percentile  per image and band: the low / high percentiles (data.scale_percentiles) -> 0 / 1,
#               values beyond them clipped (robust to a few hot or dead pixels)
#   none        values as stored, as float32 (for data whose mean / std normalise it; the colour
#               augmentations and solarisation assume [0, 1])
ScaleRule = Literal["dtype_max", "min_max", "percentile", "none"]
SCALE_RULES: tuple[ScaleRule, ...] = get_args(ScaleRule)


def check_scale(
    rule: str, percentiles: Sequence[float] = (1.0, 99.0)
) -> tuple[ScaleRule, tuple[float, float]]:
    """``rule`` and ``percentiles`` checked; a one-line ValueError naming the choices otherwise."""
    if rule not in SCALE_RULES:
        raise ValueError(f"data.scale must be one of {', '.join(SCALE_RULES)}, got {rule!r}")
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"data.scale_percentiles must satisfy 0 <= low < high <= 100, got {[low, high]}")
    return cast(ScaleRule, rule), (low, high)


def read_array(path: str | os.PathLike[str]) -> np.ndarray:
    """The numbers stored in a ``.npy`` file (no pickled objects) or in a TIFF's first series.

    TIFFs compressed with a codec that ``tifffile`` leaves to the optional ``imagecodecs`` package (LZW,
    JPEG, ...) are read page by page through Pillow instead when that package is not installed.
    """
    name = os.fspath(path).lower()
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    import tifffile  # only needed for TIFFs

    try:
        return tifffile.imread(path, series=0)
    except ValueError as exc:
        if "imagecodecs" not in str(exc):
            raise
        return _pillow_pages(path)


def _pillow_pages(path: str | os.PathLike[str]) -> np.ndarray:
    """Every page of a TIFF decoded by Pillow: one page as it is, several stacked first (C x H x W)."""
    with Image.open(path) as img:
        pages = [np.asarray(page) for page in ImageSequence.Iterator(img)]
    if len(pages) == 1:
        return pages[0]
    if len({page.shape for page in pages}) != 1 or pages[0].ndim != 2:
        raise ValueError(
            f"has {len(pages)} pages of shapes {sorted({p.shape for p in pages})}; expected equal grey pages"
        )
    return np.stack(pages)


def to_chw(array: np.ndarray, in_chans: int) -> np.ndarray:
    """Arrange ``array`` as ``(in_chans, H, W)``.

    ``(H, W)`` is one band. A 3-D array has its bands on the axis whose length is ``in_chans``: the
    first (``C x H x W``, a multi-page TIFF, a PyTorch tensor) or the last (``H x W x C``, NumPy /
    Pillow order, a multi-sample TIFF). When both have that length (an image whose side equals the band
    count) the last one is taken. Leading axes of length 1 are dropped.

    Raises:
        ValueError: no axis of length ``in_chans``, or not 2-D or 3-D; the message gives the shape.
    """
    shape = tuple(array.shape)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 2:
        if in_chans != 1:
            raise ValueError(f"has 1 band (shape {shape}), data.in_chans={in_chans}")
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"has shape {shape}; expected H x W, H x W x C or C x H x W")
    if array.shape[-1] == in_chans:
        return np.moveaxis(array, -1, 0)
    if array.shape[0] == in_chans:
        return array
    raise ValueError(
        f"has shape {shape}: neither its first nor its last axis has data.in_chans={in_chans} bands"
    )


def scale_to_unit(
    array: np.ndarray, rule: ScaleRule, percentiles: tuple[float, float] = (1.0, 99.0)
) -> np.ndarray:
    """``(C, H, W)`` values -> float32 by ``rule`` (see :data:`SCALE_RULES`).

    Raises:
        ValueError: NaN or infinite values (no rule maps them into [0, 1]), or a dtype that holds no
            numbers.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"holds {array.dtype} values, not numbers")
    values = array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(values).all():
        raise ValueError(f"holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
    if rule == "none":
        return values
    if rule == "dtype_max":
        if np.issubdtype(array.dtype, np.integer):
            return np.clip(values / float(np.iinfo(array.dtype).max), 0.0, 1.0)
        return values
    if rule == "min_max":
        low = values.min(axis=(1, 2), keepdims=True)
        high = values.max(axis=(1, 2), keepdims=True)
    else:  # percentile
        low, high = np.percentile(values, percentiles, axis=(1, 2), keepdims=True)
    return np.clip((values - low) / np.maximum(high - low, 1e-12), 0.0, 1.0).astype(np.float32)


def load_array_image(
    path: str | os.PathLike[str],
    in_chans: int,
    scale: ScaleRule = "dtype_max",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> torch.Tensor | Image.Image:
    """An array file as ``(in_chans, H, W)`` float32 in [0, 1] (by ``scale``).

    8-bit grey or RGB data under ``dtype_max`` (a TIFF saved by an image editor) comes back as the PIL
    image a picture file would give, so that it takes the same path through the transforms.

    Raises:
        ValueError / OSError: an unreadable file, a wrong band count or non-finite values (the caller
            adds the path).
    """
    bands = to_chw(read_array(path), in_chans)
    if bands.dtype == np.uint8 and scale == "dtype_max" and in_chans in (1, 3):
        return Image.fromarray(np.ascontiguousarray(bands[0] if in_chans == 1 else np.moveaxis(bands, 0, -1)))
    return torch.from_numpy(np.ascontiguousarray(scale_to_unit(bands, scale, percentiles)))
