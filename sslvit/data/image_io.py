"""Decode any image file to 8-bit RGB or grey, or an array file to bands, or fail with the path in the
message.

Datasets call :func:`load_image` (pictures through :func:`load_rgb` / :func:`load_grey`) so that every
mode Pillow can open (grayscale, palette, alpha, CMYK, 16-bit) reaches the transforms as the same thing,
and so that broken files fail *here*, where the dataset can catch the error and skip the sample, rather
than later inside a transform.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch
from PIL import Image

from sslvit.data.array_io import ARRAY_EXTENSIONS, ScaleRule, load_array_image

# Modes holding one channel of more than 8 bits; Pillow's own convert("RGB") clips them to 255.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class UnreadableImageError(OSError):
    """A file could not be decoded as an image. The message names the path and the cause."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def load_image(
    path: str | os.PathLike[str],
    in_chans: int = 3,
    max_side: int | None = None,
    scale: ScaleRule = "dtype_max",
    percentiles: tuple[float, float] = (1.0, 99.0),
) -> Image.Image | torch.Tensor:
    """Any image file as ``in_chans`` channels.

    Array files (``.npy``, ``.tif``, ``.tiff``; :mod:`~sslvit.data.array_io`) are read as numbers with
    ``in_chans`` bands, scaled to [0, 1] by ``scale``: a float ``(C, H, W)`` tensor, or a PIL image for
    8-bit grey / RGB data under ``dtype_max``. Pictures become an RGB (``in_chans=3``) or grey
    (``in_chans=1``) PIL image; they cannot give another channel count.

    Raises:
        UnreadableImageError: on any failure, a wrong channel count included.
    """
    if os.fspath(path).lower().endswith(ARRAY_EXTENSIONS):
        try:
            return load_array_image(path, in_chans, scale, percentiles)
        except Exception as exc:  # NumPy and tifffile raise ValueError, OSError, KeyError, ...
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise UnreadableImageError(path, reason) from exc
    if in_chans == 3:
        return load_rgb(path, max_side)
    if in_chans == 1:
        return load_grey(path, max_side)
    raise UnreadableImageError(
        path,
        f"a picture holds grey or RGB, data.in_chans={in_chans} needs {'/'.join(ARRAY_EXTENSIONS)} files",
    )


def load_grey(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """:func:`load_rgb`, then to 8-bit grey (ITU-R 601-2 luma, Pillow's ``convert("L")``); grey and
    high-bit-depth grey files are converted directly, without the round trip through RGB."""
    return _load_picture(path, max_side, grey=True)


def load_rgb(path: str | os.PathLike[str], max_side: int | None = None) -> Image.Image:
    """Open ``path``, decode all of its pixels and return an 8-bit RGB image.

    With ``max_side``, a JPEG whose long side exceeds it is decoded at the smallest of 1/2, 1/4 or 1/8
    scale that keeps the long side at least ``max_side`` (the decoder's DCT scaling, Pillow's ``draft``):
    a 12 MP photo then decodes several times faster. For callers that shrink the image to ``max_side``
    anyway (``device_stage="crops"``); other formats decode in full.

    Conversions:
        * ``L`` / ``1`` / ``CMYK`` / ``YCbCr`` / ...: Pillow's ``convert("RGB")``.
        * ``RGBA`` / ``LA`` / ``PA`` / ``P`` with transparency: alpha-composited on **black**. The colour
          stored under a fully transparent pixel is undefined (encoders leave whatever was there), so
          dropping alpha can expose hidden junk; compositing makes transparent areas a fixed colour, and
          black is the value the normalised pixel distribution treats as "nothing there".
        * 16-bit (``I;16*``) and 32-bit (``I``, ``F``) grayscale: rescaled to 0..255 (65535 -> 255,
          32768 -> 128), not clipped; values outside the 16-bit range are min-max scaled.

    Images with more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (89.5 MP by default) are refused before
    decoding (decompression-bomb policy); raise that limit in your script to accept bigger ones.

    Raises:
        UnreadableImageError: on any failure (missing file, not an image, truncated data, ...).
    """
    return _load_picture(path, max_side, grey=False)


def _load_picture(path: str | os.PathLike[str], max_side: int | None, grey: bool) -> Image.Image:
    try:
        # Pillow only *warns* between MAX_IMAGE_PIXELS (89.5 MP) and twice that, then decodes the whole
        # thing (a 10000 x 10000 RGB image is 300 MB per loader worker). Treat the warning as the error
        # it becomes at 2x: such a file is unreadable here, skipped or fatal per data.on_bad_image.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if max_side is not None and img.format == "JPEG" and max(img.size) > max_side:
                shrink = max_side / max(img.size)
                img.draft("RGB", (math.ceil(img.width * shrink), math.ceil(img.height * shrink)))
            # Decode everything now: Image.open is lazy and a truncated file would otherwise only
            # fail when a transform first touches the pixels.
            img.load()
            return _to_grey(img) if grey else _to_rgb(img)
    except UnreadableImageError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ...
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy()  # detach from the file handle closed by the caller's ``with``
    if mode in _HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_l(img).convert("RGB")
    if mode == "P":
        # Palette transparency (a transparent index or per-entry alpha) only survives through RGBA.
        mode = "RGBA" if "transparency" in img.info else "RGB"
        img = img.convert(mode)
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _to_grey(img: Image.Image) -> Image.Image:
    if img.mode == "L":
        return img.copy()
    if img.mode in _HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_l(img)
    return _to_rgb(img).convert("L")


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """Map a >8-bit single-channel image to mode ``L`` by scaling, never clipping."""
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        scaled = values * 255.0  # float images in [0, 1]
    elif values.size and values.min() >= 0.0 and values.max() <= 65535.0:
        scaled = values * (255.0 / 65535.0)  # 16-bit data, also what 16-bit PNGs decode to as mode I
    else:
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
