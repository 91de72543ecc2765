"""Mask generators: BEiT's block rule step by step, ratio sampling, determinism, tiny grids, bad input.

The statistics against the official generators are in test_masking_statistics.py.
"""

import numpy as np
import pytest
import torch

from sslvit.data.masking import MaskGenerator, block_mask


class ScriptedRng:
    """Stands in for ``np.random.Generator``: ``random``/``uniform`` return ``low + (high - low) * u``
    for the next scripted u, ``integers`` the next scripted offset from ``low``."""

    def __init__(self, draws: list[float]) -> None:
        self.draws = list(draws)
        self.fallback = np.random.default_rng(0)  # only for the top-up's choice

    def random(self) -> float:
        return self.draws.pop(0)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.draws.pop(0)

    def integers(self, low: int, high: int) -> int:
        offset = int(self.draws.pop(0))
        assert low + offset < high
        return low + offset

    def choice(self, *args, **kwargs):
        return self.fallback.choice(*args, **kwargs)


SQUARE = 0.5  # a uniform draw in the middle of [log 0.3, log 1/0.3]: aspect ratio 1


def test_block_rule_rejects_overshooting_blocks_and_fills_the_budget_exactly():
    # budget 10 on 6x6, blocks of >= 4. Block 1: area 4 + 6 * 1.0 = 10 -> 3x3 at (0, 0): 9 new, kept.
    # Budget 1 left; areas are drawn in [1, 4]. Attempt 1: area 4 -> 2x2 at (0, 0): no new patch,
    # rejected. Attempt 2: 2x2 at (2, 2): 3 new > 1, rejected. Attempt 3: area 1 -> 1x1 at (2, 3): kept.
    rng = ScriptedRng([1.0, SQUARE, 0, 0, 0.0, SQUARE, 0, 0, 0.0, SQUARE, 2, 2, 1.0, SQUARE, 2, 3])
    mask = block_mask((6, 6), 10, rng, min_block=4)
    expected = np.zeros((6, 6), dtype=bool)
    expected[:3, :3] = True
    expected[2, 3] = True
    assert np.array_equal(mask, expected) and not rng.draws


@pytest.mark.parametrize("exact", [False, True])
def test_block_rule_stops_after_ten_rejections_and_tops_up_only_when_asked(exact):
    # 3x3 kept (9 of 10), then ten 2x2 draws on the block (no new patch): the mask is final at 9
    draws = [1.0, SQUARE, 0, 0] + [0.0, SQUARE, 0, 0] * 10
    mask = block_mask((6, 6), 10, ScriptedRng(draws), min_block=4, exact=exact)
    assert mask[:3, :3].all()
    assert mask.sum() == (10 if exact else 9)


def test_blocks_are_strictly_smaller_than_the_grid():
    # On 3x3 a 3x3 block (area 9) does not fit and costs no position draws; a 2x2 (area 4) does. Then
    # two 2x2 draws on that block add nothing and end the mask (max_attempts=2).
    rng = ScriptedRng([1.0, SQUARE] + [0.0, SQUARE, 1, 1] + [0.0, SQUARE, 1, 1] * 2)
    mask = block_mask((3, 3), 9, rng, min_block=4, max_attempts=2)
    assert mask.sum() == 4 and mask[1:, 1:].all() and not rng.draws


def test_fractional_budgets_end_at_their_floor():
    rng = np.random.default_rng(0)
    for budget in rng.uniform(1.0, 60.0, 200):
        counts = [block_mask((14, 14), budget, rng, exact=exact).sum() for exact in (False, True)]
        assert counts[0] <= np.floor(budget) and counts[1] == np.floor(budget)


def test_independent_sampling_masks_each_crop_with_its_probability():
    gen = MaskGenerator(ratio_min=0.1, ratio_max=0.5, mask_probability=0.5, seed=0)
    ratios = gen.ratios(4000, np.random.default_rng(0))
    masked = ratios > 0
    assert masked.mean() == pytest.approx(0.5, abs=0.03)  # binomial SE 0.008
    assert ratios[masked].min() >= 0.1 and ratios[masked].max() <= 0.5
    assert ratios[masked].mean() == pytest.approx(0.3, abs=0.01)


def test_stratified_sampling_puts_one_masked_crop_in_each_stratum():
    gen = MaskGenerator(ratio_min=0.1, ratio_max=0.5, mask_probability=0.5, ratio_sampling="stratified")
    rng = np.random.default_rng(0)
    for num_crops in (2, 7, 16, 64):
        ratios = gen.ratios(num_crops, rng)
        chosen = np.sort(ratios[ratios > 0])
        assert chosen.size == num_crops // 2  # floor(0.5 n), as DINOv2's int(n * 0.5)
        edges = np.linspace(0.1, 0.5, chosen.size + 1)
        assert ((chosen >= edges[:-1]) & (chosen <= edges[1:])).all()


def test_budgets_are_floored_and_never_exceeded():
    gen = MaskGenerator(ratio_min=0.3827, ratio_max=0.3827, min_num_patches=16, seed=0)
    for grid, budget in [((14, 14), 75), ((7, 7), 18), ((16, 16), 97)]:
        counts = gen(50, grid).sum(dim=1)
        assert counts.max() == budget  # most masks reach it; none passes it
    exact = MaskGenerator(ratio_min=0.3827, ratio_max=0.3827, min_num_patches=16, exact_count=True, seed=0)
    assert (exact(50, (14, 14)).sum(dim=1) == 75).all()
    assert (exact(50, (4, 4)).sum(dim=1) == 6).all()


def test_min_block_none_is_ibots_grid_rule():
    gen = MaskGenerator(min_num_patches=None)
    assert [gen.min_block(g) for g in [(14, 14), (7, 7), (4, 4), (2, 2), (20, 12)]] == [16, 4, 1, 0, 16]
    assert MaskGenerator(min_num_patches=9).min_block((14, 14)) == 9


def test_random_mode_has_no_positional_bias():
    masks = MaskGenerator(mode="random", ratio_min=0.25, ratio_max=0.25, seed=0)(4000, (4, 4))
    assert (masks.sum(dim=1) == 4).all()
    per_position = masks.float().mean(dim=0)
    assert torch.allclose(per_position, torch.full((16,), 0.25), atol=0.03)


def test_seeded_generators_repeat_and_tiny_grids_work():
    a = MaskGenerator(seed=3)(10, (7, 7))
    b = MaskGenerator(seed=3)(10, (7, 7))
    assert torch.equal(a, b)
    assert not torch.equal(a, MaskGenerator(seed=4)(10, (7, 7)))
    for grid in [(1, 1), (2, 2), (4, 4), (7, 7)]:
        for exact in (False, True):
            masks = MaskGenerator(seed=0, exact_count=exact)(20, grid)
            assert masks.shape == (20, grid[0] * grid[1])


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="ratio_min"):
        MaskGenerator(ratio_min=0.6, ratio_max=0.5)
    with pytest.raises(ValueError, match="mode"):
        MaskGenerator(mode="grid")
    with pytest.raises(ValueError, match="ratio_sampling"):
        MaskGenerator(ratio_sampling="spread")
