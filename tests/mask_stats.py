"""Shape statistics of patch masks for the masking tests."""

from __future__ import annotations

import numpy as np


def component_sizes(mask: np.ndarray) -> list[int]:
    """Sizes of the 4-connected groups of True cells of a 2-D mask."""
    seen, sizes = np.zeros_like(mask), []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        stack, size = [start], 0
        seen[start] = True
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        sizes.append(size)
    return sizes
