"""Each method's masking config draws masks with the statistics of its official generator.

Official figures: the official code run on many masks (14x14 grids, the method's settings), with the
standard error of each statistic over sets of 200 masks (the spread of that statistic between
consecutive sets of 200). Our 200 masks (seed 0) must land within 4 standard errors.

* BEiT: microsoft/unilm at 768a3c873f598bb9b4d4dfb9267b099e35f8fe56, beit/masking_generator.py,
  ``MaskingGenerator(14, num_masking_patches=75, min_num_patches=16)``, 20000 masks.
* BEiT v2: the same commit, beit2/masking_generator.py, same arguments, 20000 masks.
* iBOT: bytedance/ibot at da316d82636a7a7356835ef224b13d5f3ace0489, loader.py,
  ``ImageFolderMask.__getitem__`` (block shape) on two 224-px crops with patch 16 and the README's ViT-S/16
  arguments ``--pred_ratio 0 0.3 --pred_ratio_var 0 0.2``, 20000 crops.
* DINOv2: facebookresearch/dinov2 at b8931f7bf91576930313be2c6d6af376033b35f0, data/collate.py
  ``collate_data_and_cast`` with data/masking.py ``MaskingGenerator`` as train/train.py builds them
  (14x14, ``max_num_patches`` 98), ``mask_ratio_tuple (0.1, 0.5)``, ``mask_probability 0.5``, batches of
  8 images x 2 global crops, 20000 masked crops (2500 batches).

"Below target": the mask has fewer patches than the budget it was asked for (``floor(ratio * 196)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mask_stats import component_sizes
from omegaconf import OmegaConf

import sslvit.data.masking.generator as generator_module
from sslvit.data.masking import MaskGenerator

MASKING_DIR = Path(__file__).resolve().parents[2] / "conf" / "data" / "masking"
GRID = (14, 14)

# statistic: (official value, standard error at 200 masks)
BEIT = {"frac_mean": (0.37996, 0.00034), "frac_std": (0.00505, 0.00064), "blocks": (1.42705, 0.04437)}
BEIT_BELOW = (0.3342, 0.03612)
BEITV2_BLOCKS = (1.79575, 0.06378)
IBOT = {"frac_mean": (0.29304, 0.00786), "frac_std": (0.11759, 0.00349), "blocks": (1.34032, 0.03465)}
IBOT_BELOW = (0.4146, 0.03397)
IBOT_MASKED_SHARE = (0.4988, 0.02466)  # of 400 crops
DINOV2 = {"frac_mean": (0.29701, 0.00094), "frac_std": (0.1154, 0.00106), "blocks": (2.38675, 0.06044)}
DINOV2_BELOW = (0.07095, 0.01704)
DINOV2_BATCH_STD = (7.785, 1.043)  # std of a batch's masked-token total over 25 batches of 16 crops


def options(name: str) -> dict[str, Any]:
    """The keys of conf/data/masking/<name>.yaml, after those of the files its defaults list names."""
    raw = OmegaConf.to_container(OmegaConf.load(MASKING_DIR / f"{name}.yaml"))
    assert isinstance(raw, dict)
    merged: dict[str, Any] = {}
    for parent in raw.pop("defaults", []):
        if parent != "_self_":
            merged.update(options(parent))
    merged.update(raw)
    merged.pop("_target_", None)
    return merged


def generator(name: str) -> MaskGenerator:
    return MaskGenerator(**{**options(name), "seed": 0})


def within(value: float, official: tuple[float, float], what: str) -> None:
    mean, se = official
    assert abs(value - mean) <= 4 * se, f"{what}: {value:.5f}, official {mean:.5f} +- 4 x {se:.5f}"


@pytest.fixture
def budgets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the whole-patch budget of every block mask the generators draw."""
    asked: list[int] = []
    block_mask = generator_module.block_mask

    def recording(grid, num_masked, *args, **kwargs):
        asked.append(int(np.floor(num_masked + 1e-9)))
        return block_mask(grid, num_masked, *args, **kwargs)

    monkeypatch.setattr(generator_module, "block_mask", recording)
    return asked


def shape_statistics(masks: torch.Tensor) -> dict[str, float]:
    counts = masks.sum(dim=1).double()
    blocks = [len(component_sizes(m)) for m in masks.view(-1, *GRID).numpy()]
    fractions = counts / masks.shape[1]
    return {
        "frac_mean": fractions.mean().item(),
        "frac_std": fractions.std(unbiased=False).item(),
        "blocks": float(np.mean(blocks)),
    }


def below_share(masks: torch.Tensor, asked: list[int]) -> float:
    assert len(asked) == masks.shape[0]
    return float(np.mean([int(m.sum()) < n for m, n in zip(masks, asked, strict=True)]))


def test_beit_masks_match_the_official_generator(budgets):
    masks = generator("beit")(200, GRID)
    assert set(budgets) == {75}  # 0.3827 x 196
    assert masks.sum(dim=1).max() == 75
    for key, value in shape_statistics(masks).items():
        within(value, BEIT[key], f"BEiT {key}")
    within(below_share(masks, budgets), BEIT_BELOW, "BEiT share below 75")


def test_beitv2_masks_match_the_official_generator():
    masks = generator("beitv2")(200, GRID)
    assert (masks.sum(dim=1) == 75).all()  # topped up to exactly the budget
    within(shape_statistics(masks)["blocks"], BEITV2_BLOCKS, "BEiT v2 blocks")


def test_ibot_masks_match_the_official_loader(budgets):
    masks = generator("ibot")(400, GRID)
    masked = masks.any(dim=1)
    within(masked.double().mean().item(), IBOT_MASKED_SHARE, "iBOT masked share")
    for key, value in shape_statistics(masks[masked]).items():
        within(value, IBOT[key], f"iBOT {key}")
    within(below_share(masks[masked], budgets), IBOT_BELOW, "iBOT share below budget")


def test_dinov2_masks_match_the_official_collate(budgets):
    gen = generator("dinov2")
    batches = [gen(16, GRID) for _ in range(25)]
    assert all(int(b.any(dim=1).sum()) == 8 for b in batches)  # int(0.5 x 16) masked crops per batch
    masks = torch.cat(batches)
    masked = masks[masks.any(dim=1)]
    assert masked.shape[0] == 200
    for key, value in shape_statistics(masked).items():
        within(value, DINOV2[key], f"DINOv2 {key}")
    within(below_share(masked, budgets), DINOV2_BELOW, "DINOv2 share below budget")
    # one crop per ratio stratum keeps a batch's masked-token total steady (independent ratios: ~64)
    totals = torch.stack([b.sum() for b in batches]).double()
    within(totals.std(unbiased=False).item(), DINOV2_BATCH_STD, "DINOv2 std of the batch total")
