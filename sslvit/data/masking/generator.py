"""The mask generator a DataModule calls in its collate function."""

from __future__ import annotations

import math

import numpy as np
import torch

from sslvit.data.masking.block import block_mask

RATIO_SAMPLINGS = ("independent", "stratified")


def _floor(x: float) -> int:
    """``floor`` as the official generators' ``int(ratio * n)``, with a hair of slack so that products
    such as 0.29 * 100 = 28.999... count as the 29 they stand for."""
    return math.floor(x + 1e-9)


class MaskGenerator:
    """Draws masks for the global crops of a batch: ``(num_masks, (h, w)) -> (num_masks, h*w)`` bool.

    Masks are made in the data pipeline, never in the training step (no host syncs there). A crop with
    ratio r gets a budget of ``floor(r * h * w)`` patches (kept fractional for the block draws with
    ``fractional_budget``, as iBOT's loader does; a mask never passes the floor). Block masks fill the
    budget with BEiT's rectangles (:func:`~sslvit.data.masking.block.block_mask`), which may end a few
    patches short unless ``exact_count`` tops them up; random masks take exactly the budget. The
    defaults of each method (its ``conf/data/masking`` file) follow its official code:

    * BEiT (Bao et al., 2022): every crop, 75 of 196 patches (ratio 0.3827, so 18 on a 7x7 grid and
      97 on 16x16), blocks of >= 16 patches, no top-up. BEiT v2 (Peng et al., 2022): the same with
      ``exact_count`` (its generator tops up to exactly 75).
    * iBOT (Zhou et al., 2022): each crop masked with probability 0.5 (the released recipes' prediction
      ratios "0 or 0.3 +- 0.2"), ratio ~ U(0.1, 0.5), blocks of >= (min(h, w) // 3)^2 patches (16 on
      14x14), a fractional budget, no top-up.
    * DINOv2 (Oquab et al., 2024): ``floor(0.5 n)`` of the batch's n crops masked, the i-th of them with
      a ratio drawn uniformly in the i-th of equal strata of [0.1, 0.5], shuffled over the crops:
      the batch covers the whole range, so the number of masked tokens per batch varies less than with
      independent draws. Blocks of >= 4 patches, no top-up.

    Args:
        mode: "block" (rectangles) or "random" (independent patches, always exactly the budget).
        ratio_min / ratio_max: range of the masked fraction of a masked crop.
        mask_probability: chance (``"independent"``) or share (``"stratified"``) of masked crops.
        ratio_sampling: ``"independent"``: each crop is masked with ``mask_probability``, ratio
            U(ratio_min, ratio_max); ``"stratified"``: as DINOv2's collate (see above).
        min_num_patches: smallest block area; None: iBOT's ``(min(h, w) // 3) ** 2`` of the grid.
        min_aspect / max_aspect: block aspect-ratio range (None: 1 / min_aspect).
        exact_count: top block masks up with random patches to exactly the budget (BEiT v2).
        fractional_budget: draw block areas against the unrounded budget ``r * h * w`` (iBOT), not
            its floor (BEiT, DINOv2). Masks end at whole patches either way, but the fraction changes
            how often the last small blocks fit.
        seed: base seed; each DataLoader worker draws from its own stream. None (the default): the
            stream is seeded by torch's seed of the process / worker / batch.
    """

    def __init__(
        self,
        mode: str = "block",
        ratio_min: float = 0.1,
        ratio_max: float = 0.5,
        mask_probability: float = 1.0,
        ratio_sampling: str = "independent",
        min_num_patches: int | None = 4,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        exact_count: bool = False,
        fractional_budget: bool = False,
        seed: int | None = None,
    ) -> None:
        if mode not in ("block", "random"):
            raise ValueError(f"masking mode must be block or random, got {mode!r}")
        if not 0.0 <= ratio_min <= ratio_max <= 1.0:
            raise ValueError(f"need 0 <= ratio_min <= ratio_max <= 1, got {ratio_min}, {ratio_max}")
        if not 0.0 <= mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
        if ratio_sampling not in RATIO_SAMPLINGS:
            raise ValueError(f"ratio_sampling must be one of {RATIO_SAMPLINGS}, got {ratio_sampling!r}")
        self.mode, self.ratio_min, self.ratio_max = mode, ratio_min, ratio_max
        self.mask_probability, self.ratio_sampling = mask_probability, ratio_sampling
        self.min_num_patches, self.exact_count = min_num_patches, bool(exact_count)
        self.fractional_budget = bool(fractional_budget)
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
        if self.ratio_sampling == "independent":
            masked = rng.random(num_masks) < self.mask_probability
            return np.where(masked, rng.uniform(self.ratio_min, self.ratio_max, num_masks), 0.0)
        num_masked_crops = _floor(self.mask_probability * num_masks)
        edges = np.linspace(self.ratio_min, self.ratio_max, num_masked_crops + 1)
        ratios = np.zeros(num_masks)
        ratios[:num_masked_crops] = edges[:-1] + (edges[1:] - edges[:-1]) * rng.random(num_masked_crops)
        return rng.permutation(ratios)

    def min_block(self, grid: tuple[int, int]) -> int:
        """Smallest block area on ``grid``."""
        if self.min_num_patches is None:
            return (min(grid) // 3) ** 2
        return self.min_num_patches

    def __call__(self, num_masks: int, grid: tuple[int, int]) -> torch.Tensor:
        rng = self.rng()
        num_patches = grid[0] * grid[1]
        masks = np.zeros((num_masks, num_patches), dtype=bool)
        min_block = self.min_block(grid)
        for i, ratio in enumerate(self.ratios(num_masks, rng)):
            budget = ratio * num_patches
            if not self.fractional_budget:
                budget = _floor(budget)
            if _floor(budget) == 0:
                continue
            if self.mode == "random":
                masks[i, rng.choice(num_patches, _floor(budget), replace=False)] = True
            else:
                mask = block_mask(grid, budget, rng, min_block, self.aspect, exact=self.exact_count)
                masks[i] = mask.reshape(-1)
        return torch.from_numpy(masks)
