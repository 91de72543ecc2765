"""Block-wise masking of a patch grid (BEiT's algorithm), with a random-patch top-up."""

from __future__ import annotations

import math

import numpy as np


def block_mask(
    grid: tuple[int, int],
    num_masked: int,
    rng: np.random.Generator,
    min_block: int = 4,
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    max_attempts: int = 10,
) -> np.ndarray:
    """One (h, w) bool mask with exactly ``num_masked`` True patches, built from rectangles.

    BEiT (Bao et al., 2022, arXiv:2106.08254, Algorithm 1): draw a block area s ~ U(min_block, budget)
    and an aspect ratio with log r ~ U(log a_min, log a_max), place it uniformly, keep the newly covered
    patches; repeat until the budget is met. Blocks that no longer fit are retried ``max_attempts``
    times; whatever is still missing is topped up with random unmasked patches, and an overshoot from
    the last block is trimmed at random, so the count is exact (iBOT / DINOv2 do the same top-up).
    """
    height, width = grid
    num_masked = int(min(max(num_masked, 0), height * width))
    mask = np.zeros((height, width), dtype=bool)
    log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
    failures = 0
    while mask.sum() < num_masked and failures < max_attempts:
        budget = num_masked - int(mask.sum())
        low = min(min_block, budget)
        area = rng.uniform(low, budget) if budget > low else float(budget)
        ratio = math.exp(rng.uniform(*log_aspect))
        h = round(math.sqrt(area * ratio))
        w = round(math.sqrt(area / ratio))
        if not (0 < h <= height and 0 < w <= width):
            failures += 1
            continue
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        before = mask.sum()
        mask[top : top + h, left : left + w] = True
        failures = failures + 1 if mask.sum() == before else 0
    flat = mask.reshape(-1)
    count = int(flat.sum())
    if count < num_masked:  # top up with random free patches
        free = np.flatnonzero(~flat)
        flat[rng.choice(free, num_masked - count, replace=False)] = True
    elif count > num_masked:  # the last block overshot: give some of it back
        taken = np.flatnonzero(flat)
        flat[rng.choice(taken, count - num_masked, replace=False)] = False
    return mask
