"""The channel count of a data set, and what follows from it: per-channel statistics and colour ops.

Every dataset, transform and callback of a data config is built with the same ``in_chans`` (the
``data.in_chans`` key, which the backbone reads too). Grey images have one channel, photographs three,
multi-band arrays (satellite, microscopy) any number. Two rules live here so that every consumer applies
them alike:

* per-channel values (``mean``, ``std``) are given once per channel, or once for all channels;
* the colour augmentations defined for RGB (saturation, hue, greyscale) need three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def check_in_chans(in_chans: int) -> int:
    """``in_chans`` as an int, or a one-line ValueError when it is below one."""
    if int(in_chans) != in_chans or in_chans < 1:
        raise ValueError(f"data.in_chans must be a positive integer, got {in_chans!r}")
    return int(in_chans)


def channel_values(values: Sequence[float], in_chans: int, name: str) -> tuple[float, ...]:
    """One value per channel: ``values`` as they are when there are ``in_chans`` of them, a single value
    repeated ``in_chans`` times (grey statistics serve 1- and 3-channel runs alike).

    Raises:
        ValueError: any other number of values; the message names the option and the fix.
    """
    out = tuple(float(v) for v in values)
    if len(out) == 1:
        return out * in_chans
    if len(out) != in_chans:
        raise ValueError(
            f"{name} has {len(out)} values but data.in_chans={in_chans}: give one value per channel or a "
            f"single value for all (python -m sslvit.data.stats computes them from the data)"
        )
    return out


@dataclass(frozen=True)
class ColourOps:
    """The colour augmentations that apply at a channel count, and one sentence saying what changed.

    Attributes:
        color_jitter: (brightness, contrast, saturation, hue) strengths that apply.
        grayscale_p: greyscale probability that applies.
        note: None when the recipe is unchanged, else why some ops are off (logged once at start).
    """

    color_jitter: tuple[float, float, float, float]
    grayscale_p: float
    note: str | None


def colour_ops(in_chans: int, color_jitter: Sequence[float], grayscale_p: float = 0.0) -> ColourOps:
    """The colour recipe for ``in_chans`` channels.

    Saturation and hue are defined for RGB only and greyscale turns RGB into luma; with any other
    channel count they are off. Brightness (scale every channel) and contrast (blend with the image's
    mean) mean the same for any number of channels and stay. Solarisation (invert values above half the
    range) and blur act per channel and are not affected.
    """
    jitter = tuple(float(v) for v in color_jitter)
    if len(jitter) != 4:
        raise ValueError(
            f"color_jitter needs 4 strengths (brightness, contrast, saturation, hue), got {jitter}"
        )
    brightness, contrast, saturation, hue = jitter
    if in_chans == 3:
        return ColourOps((brightness, contrast, saturation, hue), float(grayscale_p), None)
    dropped = [
        name for name, on in (("saturation", saturation), ("hue", hue), ("greyscale", grayscale_p)) if on
    ]
    note = None
    if dropped:
        note = (
            f"{in_chans}-channel images: {', '.join(dropped)} off (defined for RGB only); colour jitter "
            "keeps brightness and contrast, blur and solarisation apply per channel"
        )
    return ColourOps((brightness, contrast, 0.0, 0.0), 0.0, note)
