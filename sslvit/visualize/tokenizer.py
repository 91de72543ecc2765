"""Tokenizer diagnostics that take plain tensors: reconstructions side by side and codebook usage.

They work for any tokenizer with ``encode(images) -> ids (B, h, w)`` (dVAE for BEiT, Bao et al., 2022,
arXiv:2106.08254; VQ-KD for BEiT v2, Peng et al., 2022, arXiv:2208.06366): the caller runs the
tokenizer and passes images, reconstructions or token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.visualize.render import denormalize, grid


def reconstruction_grid(
    images: torch.Tensor,
    reconstructions: torch.Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ncol: int = 8,
) -> torch.Tensor:
    """Originals and reconstructions in alternating rows (``ncol`` images per row pair).

    Args:
        images / reconstructions: ``(B, C, H, W)`` in the same value space.
        mean / std: normalisation to undo; pass ``(0,)`` and ``(1,)`` for images already in [0, 1].
            None min-max scales each image on its own, which hides brightness errors.
        ncol: images per row.

    Returns:
        ``(3, H', W')`` image in [0, 1].
    """
    if images.shape != reconstructions.shape:
        raise ValueError(
            f"images {tuple(images.shape)} and reconstructions {tuple(reconstructions.shape)} differ in shape"
        )
    originals = denormalize(images, mean, std)
    rebuilt = denormalize(reconstructions, mean, std)
    rows = []
    for start in range(0, originals.shape[0], ncol):
        chunk_o, chunk_r = originals[start : start + ncol], rebuilt[start : start + ncol]
        pad = ncol - chunk_o.shape[0]
        if pad:  # keep originals and reconstructions aligned in their columns
            blank = torch.ones(pad, *chunk_o.shape[1:])
            chunk_o, chunk_r = torch.cat([chunk_o, blank]), torch.cat([chunk_r, blank])
        rows += [chunk_o, chunk_r]
    return grid(torch.cat(rows), ncol=ncol)


@dataclass
class CodebookUsage:
    """Statistics of token ids over a vocabulary.

    Attributes:
        counts: ``(V,)`` int64 occurrences of each code.
        used_fraction: fraction of the V codes that occur at least once.
        perplexity: ``exp(H(p))`` of the code frequencies, the "effective number of codes" (V when all
            codes are equally used, 1 when a single code is).
    """

    counts: torch.Tensor
    used_fraction: float
    perplexity: float


def codebook_usage(ids: torch.Tensor, vocab_size: int) -> CodebookUsage:
    """Count token ids (any shape, e.g. ``(B, h, w)``) over a vocabulary of ``vocab_size`` codes."""
    flat = ids.detach().reshape(-1).long().cpu()
    if flat.numel() == 0:
        raise ValueError("no token ids to count")
    if int(flat.min()) < 0 or int(flat.max()) >= vocab_size:
        raise ValueError(f"token ids span [{int(flat.min())}, {int(flat.max())}], outside [0, {vocab_size})")
    counts = torch.bincount(flat, minlength=vocab_size)
    used_fraction, perplexity = usage_and_perplexity(counts)
    return CodebookUsage(counts=counts, used_fraction=float(used_fraction), perplexity=float(perplexity))


def codebook_histogram(
    usage: CodebookUsage, width: int = 512, height: int = 200, sort: bool = True
) -> torch.Tensor:
    """Bar chart of code frequencies (most used first when ``sort``) with a one-line summary.

    Codes are binned into at most ``width`` columns (the mean count per bin), so 8192 codes fit.

    Returns:
        ``(3, height, width)`` image in [0, 1].
    """
    counts = usage.counts.double()
    if sort:
        counts = counts.sort(descending=True).values
    v = counts.numel()
    bins = min(v, width)
    edges = torch.linspace(0, v, bins + 1).round().long()
    heights = torch.stack([counts[edges[i] : max(edges[i + 1], edges[i] + 1)].mean() for i in range(bins)])
    heights = heights / heights.max().clamp_min(1e-12)

    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top, bottom = 18, height - 2  # room for the summary line
    column = width / bins
    for i, value in enumerate(heights.tolist()):
        if value <= 0:
            continue
        y = bottom - value * (bottom - top)
        draw.rectangle([i * column, y, max(i * column, (i + 1) * column - 1), bottom], fill=(68, 1, 84))
    summary = f"{v} codes: {usage.used_fraction:.1%} used, perplexity {usage.perplexity:.1f}"
    draw.text((4, 2), summary, fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255.0
