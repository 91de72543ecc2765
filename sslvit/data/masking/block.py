"""Block-wise masking of a patch grid (BEiT's algorithm), with an optional random-patch top-up."""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    grid: tuple[int, int],
    num_masked: float,
    rng: np.random.Generator,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_attempts: int = 10,
    exact: bool = False,
) -> np.ndarray:
    """One (h, w) bool mask of at most ``floor(num_masked)`` True patches, built from rectangles.

    BEiT (Bao et al., 2022, arXiv:2106.08254, Algorithm 1), as its official generator runs it (and
    iBOT's and DINOv2's, which reuse it): while patches remain in the budget, draw a block area
    s ~ U(min_block, budget) and an aspect ratio with log r ~ U(log a_min, log a_max), round to a
    whole-patch rectangle strictly smaller than the grid on both sides, place it uniformly, and keep it
    only if it covers at least one new patch and no more new patches than the budget left. After
    ``max_attempts`` rejected draws in a row the mask is final, so some masks end a few patches short
    (about a third of BEiT's 75-of-196 masks). A block is never trimmed, so masks stay made of whole
    rectangles.

    Args:
        grid: (h, w) patch grid.
        num_masked: the budget (clipped to [0, h * w]). It may be fractional, as in iBOT's loader: the
            mask still ends at a whole number of patches, but the area draws use the fractional rest.
        rng: the random stream.
        min_block: smallest drawn block area. When the budget left is smaller, the area is drawn between
            the two (as Python's ``random.uniform`` does with reversed bounds), so the last blocks are
            mostly rejected unless they overlap the mask.
        aspect: (a_min, a_max) of the block aspect ratio.
        max_attempts: rejected draws in a row that end the mask.
        exact: top the mask up with random unmasked patches to exactly ``floor(num_masked)`` (BEiT v2's
            generator does; BEiT's, iBOT's and DINOv2's do not).
    """
    height, width = grid
    num_masked = min(max(float(num_masked), 0.0), float(height * width))
    mask = np.zeros((height, width), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    count = 0
    while count < num_masked:
        added = _add_block(mask, num_masked - count, rng, min_block, log_aspect, max_attempts)
        if added == 0:
            break
        count += added
    missing = math.floor(num_masked) - count
    if exact and missing > 0:
        flat = mask.reshape(-1)  # a view: writes go to mask
        flat[rng.choice(np.flatnonzero(~flat), missing, replace=False)] = True
    return mask


def _add_block(
    mask: np.ndarray,
    budget: float,
    rng: np.random.Generator,
    min_block: float,
    log_aspect: tuple[float, float],
    max_attempts: int,
) -> int:
    """Mask one rectangle adding between 1 and ``floor(budget)`` new patches; returns how many (0: none
    fit in ``max_attempts`` draws)."""
    height, width = mask.shape
    for _ in range(max_attempts):
        area = min_block + (budget - min_block) * rng.random()  # U between the two, in either order
        ratio = math.exp(rng.uniform(*log_aspect))
        h = round(math.sqrt(area * ratio))
        w = round(math.sqrt(area / ratio))
        if h >= height or w >= width:
            continue
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        new = h * w - int(mask[top : top + h, left : left + w].sum())
        if 0 < new <= budget:
            mask[top : top + h, left : left + w] = True
            return new
    return 0
