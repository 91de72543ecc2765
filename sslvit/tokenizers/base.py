"""What every visual tokenizer offers to masked image modelling: ``encode(images) -> token ids``."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class VisualTokenizer(Protocol):
    """A frozen image -> discrete-token map, the prediction target of BEiT / BEiT v2 pretraining.

    Bao et al., 2022 (BEiT, arXiv:2106.08254) tokenize with a discrete VAE; Peng et al., 2022 (BEiT v2,
    arXiv:2208.06366) with a vector-quantised knowledge-distillation tokenizer. Both reduce an image to
    an ``h x w`` grid of ids in ``[0, vocab_size)``, one id per ``downsample x downsample`` pixel cell, and
    the MIM method sizes the tokenizer's view so this grid equals the ViT patch grid.

    Conventions:
        * ``encode`` takes ``(B, C, H, W)`` float pixels in ``[0, 1]`` (not mean/std normalised): each
          tokenizer applies its own input mapping, so a data pipeline serves any tokenizer.
        * ``H`` and ``W`` are multiples of ``downsample``; the output is ``(B, H // downsample,
          W // downsample)`` int64.
        * ``encode`` is deterministic (argmax / nearest code) and needs no gradient.

    Attributes:
        vocab_size: number of distinct token ids.
        downsample: pixels per token along each side.
    """

    vocab_size: int
    downsample: int

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` of an input of ``height x width`` pixels."""
        ...

    def encode(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` pixels in [0, 1] -> ``(B, H // downsample, W // downsample)`` int64 ids."""
        ...


def token_grid(downsample: int, height: int, width: int) -> tuple[int, int]:
    """``(height // downsample, width // downsample)``; a size that does not divide is an error."""
    if height % downsample or width % downsample:
        raise ValueError(
            f"tokenizer input {height}x{width} is not a multiple of its downsampling factor {downsample}"
        )
    return height // downsample, width // downsample
