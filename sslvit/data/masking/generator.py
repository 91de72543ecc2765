"""The mask generator a DataModule calls in its collate function."""

from __future__ import annotations

import numpy as np
import torch

from sslvit.data.masking.block import block_mask


class MaskGenerator:
    """Draws masks for the global crops of a batch: ``(num_masks, (h, w)) -> (num_masks, h*w)`` bool.

    Masks are made in the data pipeline, never in the training step (no host syncs there).

    * iBOT (Zhou et al., 2022): every global crop masked, ratio per crop U(0.1, 0.5), block-wise.
    * DINOv2 (Oquab et al., 2024): ``round(mask_probability * n)`` of the n crops masked (0.5), with
      ratios spread evenly over [ratio_min, ratio_max] and shuffled, which lowers the variance of the
      number of masked tokens per batch compared with independent draws.
    * BEiT (Bao et al., 2022): ratio fixed at 0.4 (ratio_min = ratio_max), blocks of >= 16 patches.

    Args:
        mode: "block" (rectangles) or "random" (independent patches).
        ratio_min / ratio_max: range of the masked fraction of a masked crop.
        mask_probability: fraction of crops that are masked at all.
        spread_ratios: spread ratios evenly over the range (DINOv2) instead of drawing them i.i.d.
        min_num_patches: smallest block (16 in BEiT on 14x14; clipped to the budget on small grids).
        min_aspect / max_aspect: block aspect-ratio range.
        seed: base seed; each DataLoader worker draws from its own stream. None (the default): the
            stream is seeded by torch's seed of the process / worker / batch.
    """

    def __init__(
        self,
        mode: str = "block",
        ratio_min: float = 0.1,
        ratio_max: float = 0.5,
        mask_probability: float = 1.0,
        spread_ratios: bool = False,
        min_num_patches: int = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        seed: int | None = None,
    ) -> None:
        if mode not in ("block", "random"):
            raise ValueError(f"masking mode must be block or random, got {mode!r}")
        if not 0.0 <= ratio_min <= ratio_max <= 1.0:
            raise ValueError(f"need 0 <= ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
        self.mode, self.ratio_min, self.ratio_max = mode, ratio_min, ratio_max
        self.mask_probability, self.spread_ratios = mask_probability, spread_ratios
        self.min_num_patches = min_num_patches
        self.aspect = (min_aspect, max_aspect if max_aspect is not None else 1.0 / min_aspect)
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def rng(self) -> np.random.Generator:
        """This process's / worker's generator (workers get distinct streams from torch's seeds)."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        # With seed=None the stream follows torch's seed: it is re-created whenever that seed changes,
        # which the resumable training loader does per batch (SeededCollate) so that a run resumed
        # mid-epoch draws the masks of the uninterrupted run.
        key = (worker, self.seed if self.seed is not None else torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([int(key[1]) % 2**63, worker + 1])
            self._rng_key = key
        return self._rng

    def ratios(self, num_masks: int, rng: np.random.Generator) -> np.ndarray:
        """Masked fraction of each crop (0 for crops left unmasked)."""
        num_masked_crops = round(self.mask_probability * num_masks)
        if self.spread_ratios and num_masked_crops > 0:
            chosen = np.linspace(self.ratio_min, self.ratio_max, num_masked_crops)
        else:
            chosen = rng.uniform(self.ratio_min, self.ratio_max, num_masked_crops)
        ratios = np.zeros(num_masks)
        ratios[:num_masked_crops] = chosen
        return rng.permutation(ratios)

    def __call__(self, num_masks: int, grid: tuple[int, int]) -> torch.Tensor:
        rng = self.rng()
        num_patches = grid[0] * grid[1]
        masks = np.zeros((num_masks, num_patches), dtype=bool)
        for i, ratio in enumerate(self.ratios(num_masks, rng)):
            count = round(ratio * num_patches)
            if count == 0:
                continue
            if self.mode == "random":
                masks[i, rng.choice(num_patches, count, replace=False)] = True
            else:
                masks[i] = block_mask(grid, count, rng, self.min_num_patches, self.aspect).reshape(-1)
        return torch.from_numpy(masks)
