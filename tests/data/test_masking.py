"""Mask generators: ratio bounds, block shapes, masking probability, determinism, tiny grids."""

import numpy as np
import pytest
import torch

from sslvit.data.masking import MaskGenerator, block_mask


def test_ratios_stay_within_bounds_and_average_to_the_middle():
    gen = MaskGenerator(mode="block", ratio_min=0.1, ratio_max=0.5, seed=0)
    masks = gen(2000, (14, 14))
    assert masks.dtype == torch.bool and masks.shape == (2000, 196)
    fractions = masks.float().mean(dim=1)
    assert fractions.min() >= 0.1 - 1 / 196 and fractions.max() <= 0.5 + 1 / 196
    assert fractions.mean().item() == pytest.approx(0.3, abs=0.01)


def test_single_block_is_a_rectangle_with_bounded_aspect():
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = block_mask((14, 14), 20, rng, min_block=20, aspect=(0.3, 1 / 0.3))
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = rows.size, cols.size
        if mask.sum() == h * w:  # not topped up: one clean rectangle
            assert 0.3 / 1.5 <= h / w <= 1.5 / 0.3  # rounding to whole patches loosens the bound a little
        assert mask.sum() == 20


def test_beit_setting_masks_exactly_75_of_196():
    gen = MaskGenerator(mode="block", ratio_min=0.4, ratio_max=0.4, min_num_patches=16, seed=0)
    assert (gen(50, (14, 14)).sum(dim=1) == 78).all() or (
        gen(50, (14, 14)).sum(dim=1) == round(0.4 * 196)
    ).all()


def test_mask_probability_and_spread_ratios():
    gen = MaskGenerator(ratio_min=0.1, ratio_max=0.5, mask_probability=0.5, spread_ratios=True, seed=0)
    masks = gen(64, (8, 8))
    assert (masks.any(dim=1)).sum().item() == 32
    fractions = masks.float().mean(dim=1)
    assert fractions[masks.any(1)].min() >= 0.1 - 1 / 64


def test_random_mode_has_no_positional_bias():
    masks = MaskGenerator(mode="random", ratio_min=0.25, ratio_max=0.25, seed=0)(4000, (4, 4))
    per_position = masks.float().mean(dim=0)
    assert torch.allclose(per_position, torch.full((16,), 0.25), atol=0.03)


def test_seeded_generators_repeat_and_tiny_grids_work():
    a = MaskGenerator(seed=3)(10, (7, 7))
    b = MaskGenerator(seed=3)(10, (7, 7))
    assert torch.equal(a, b)
    assert not torch.equal(a, MaskGenerator(seed=4)(10, (7, 7)))
    for grid in [(1, 1), (2, 2), (4, 4), (7, 7)]:
        masks = MaskGenerator(seed=0)(20, grid)
        assert masks.shape == (20, grid[0] * grid[1])


def test_invalid_settings_fail_clearly():
    with pytest.raises(ValueError, match="ratio_min"):
        MaskGenerator(ratio_min=0.6, ratio_max=0.5)
    with pytest.raises(ValueError, match="mode"):
        MaskGenerator(mode="grid")
