"""CLS attention maps: the right token slice, on the right patch, registers excluded, DINO thresholding."""

import math

import pytest
import torch

from sslvit.backbones import MaskedViT
from sslvit.visualize import attention_figure, attention_maps, cls_attention_maps, keep_top_mass


def _attention(num_registers: int, grid: tuple[int, int], heads: int = 2) -> torch.Tensor:
    tokens = 1 + num_registers + grid[0] * grid[1]
    return torch.full((1, heads, tokens, tokens), 1.0 / tokens)


def test_attention_forced_to_one_patch_lands_on_that_patch_and_registers_are_skipped():
    grid, registers = (2, 3), 2
    attn = _attention(registers, grid)
    # Head 0: CLS sends 0.7 to register 0 and 0.3 to patch 4 = row 1, column 1 of the 2x3 grid.
    attn[0, 0, 0] = 0.0
    attn[0, 0, 0, 1] = 0.7
    attn[0, 0, 0, 1 + registers + 4] = 0.3
    maps = cls_attention_maps(attn, grid, num_register_tokens=registers)
    assert maps.shape == (1, 2, 2, 3)
    expected = torch.zeros(2, 3)
    expected[1, 1] = 1.0  # register mass dropped, the patch's share renormalised to 1
    torch.testing.assert_close(maps[0, 0], expected)
    torch.testing.assert_close(maps[0, 1], torch.full((2, 3), 1 / 6))  # uniform head stays uniform

    raw = cls_attention_maps(attn, grid, num_register_tokens=registers, renormalize=False)
    assert raw[0, 0, 1, 1] == pytest.approx(0.3) and raw[0, 0].sum() == pytest.approx(0.3)


def test_wrong_register_count_is_a_clear_error():
    with pytest.raises(ValueError, match="1 CLS \\+ 0 registers"):
        cls_attention_maps(_attention(4, (2, 2)), (2, 2), num_register_tokens=0)


def test_keep_top_mass_keeps_the_smallest_set_holding_the_mass():
    maps = torch.tensor([[0.1, 0.5], [0.3, 0.1]])
    assert keep_top_mass(maps, 0.6).tolist() == [[False, True], [True, False]]  # 0.5 + 0.3 >= 0.6
    assert keep_top_mass(maps, 0.5).tolist() == [[False, True], [False, False]]
    assert int(keep_top_mass(maps, 0.85).sum()) == 3
    assert bool(keep_top_mass(maps * 7.0, 1.0).all())  # scale does not matter


def test_backbone_maps_with_registers_match_the_last_block_attention():
    torch.manual_seed(0)
    backbone = MaskedViT(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_register_tokens=3
    ).eval()
    images = torch.randn(2, 3, 16, 8)  # non-square: 4x2 grid
    attn = backbone.get_last_selfattention(images)
    assert attn.shape == (2, 2, 1 + 3 + 8, 1 + 3 + 8)
    small = attention_maps(backbone, images, upsample=False)
    patch_part = attn[:, :, 0, 4:]
    torch.testing.assert_close(small.flatten(2), patch_part / patch_part.sum(-1, keepdim=True))
    big = attention_maps(backbone, images)
    assert big.shape == (2, 2, 16, 8)
    torch.testing.assert_close(big[:, :, ::4, ::4], small)  # one 4x4 block per patch
    masks = attention_maps(backbone, images, threshold=0.6, upsample=False)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    kept_mass = (small * masks).flatten(2).sum(-1)
    assert bool((kept_mass >= 0.6 - 1e-6).all())

    picture = attention_figure(torch.rand(2, 3, 16, 8), small)
    assert picture.shape == (3, 2 * (16 + 2) + 2, 3 * (8 + 2) + 2)  # 2 rows of image + 2 heads
    assert math.isclose(float(picture.max()), 1.0, abs_tol=1e-6) and float(picture.min()) >= 0.0
