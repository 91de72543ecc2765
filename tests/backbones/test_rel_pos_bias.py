"""BEiT's shared relative position bias: the index table by hand, and its effect inside MaskedViT."""

import pytest
import torch

from sslvit.backbones import MaskedViT
from sslvit.backbones.rel_pos_bias import RelativePositionBias, relative_position_index


def test_index_table_of_a_2x2_grid_by_hand():
    # Offsets (dy, dx) in [-1, 1]^2 -> (dy + 1) * 3 + (dx + 1): rows 0..8; then 9 = CLS -> patch,
    # 10 = patch -> CLS, 11 = CLS -> CLS. Patches in row-major order (0,0), (0,1), (1,0), (1,1).
    expected = torch.tensor(
        [
            [11, 9, 9, 9, 9],
            [10, 4, 3, 1, 0],
            [10, 5, 4, 2, 1],
            [10, 7, 6, 4, 3],
            [10, 8, 7, 5, 4],
        ]
    )
    assert torch.equal(relative_position_index((2, 2), (2, 2), num_prefix=1), expected)


def test_smaller_grids_and_registers_reuse_the_table_rows():
    # A 1x2 input in a table sized for 3x3 (5x5 offsets): offset (0, -1) -> 2 * 5 + 1 = 11, (0, 1) -> 13.
    index = relative_position_index((1, 2), (3, 3), num_prefix=2)
    assert index[2:, 2:].tolist() == [[12, 11], [13, 12]]
    assert (index[:2, 2:] == 25).all() and (index[2:, :2] == 26).all() and (index[:2, :2] == 27).all()
    with pytest.raises(ValueError, match="larger than"):
        relative_position_index((4, 3), (3, 3), num_prefix=1)


def test_bias_values_follow_the_index():
    module = RelativePositionBias((2, 2), num_heads=3)
    with torch.no_grad():
        module.table.copy_(torch.arange(12 * 3, dtype=torch.float32).view(12, 3))
    bias = module((2, 2))
    assert bias.shape == (1, 3, 5, 5)
    # head h, query patch (0,1) (token 2) -> key patch (1,0) (token 3): row 2
    assert bias[0, 1, 2, 3] == module.table[2, 1]
    assert bias[0, 2, 0, 0] == module.table[11, 2]


def test_a_smaller_grid_gets_its_own_index_built_once():
    module = RelativePositionBias((3, 3), num_heads=2)
    index = relative_position_index((2, 2), (3, 3), num_prefix=1)
    bias = module((2, 2))
    with torch.no_grad():
        expected = module.table[index.reshape(-1)].view(5, 5, 2).permute(2, 0, 1)
    assert torch.equal(bias[0], expected)
    module((2, 2))  # the second call reuses the index (a GPU run would copy it from the host only once)
    assert list(module._other_grids) == [((2, 2), module.table.device)]


def _pair(**kwargs):
    args = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, layerscale_init=0.1)
    torch.manual_seed(0)
    with_bias = MaskedViT(**args, rel_pos_bias=True, **kwargs).eval()
    plain = MaskedViT(**args, **kwargs).eval()
    plain.load_state_dict({k: v for k, v in with_bias.state_dict().items() if not k.startswith("rel_pos")})
    return with_bias, plain


def test_zero_bias_is_the_plain_vit_and_a_bias_changes_attention():
    with_bias, plain = _pair()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        with_bias.rel_pos_bias.table.zero_()
    assert torch.allclose(with_bias(images), plain(images), atol=1e-5)
    with torch.no_grad():
        with_bias.rel_pos_bias.table[7 * 7 + 2] = 50.0  # 4x4 grid: 49 offsets, row 51 = CLS -> CLS
    attention = with_bias.get_last_selfattention(images)  # the CLS query now attends only to itself
    assert torch.allclose(attention[:, :, 0, 0], torch.ones(2, 2), atol=1e-4)
    assert not torch.allclose(with_bias(images), plain(images), atol=1e-3)


def test_table_is_trained_without_weight_decay_at_the_top_layer():
    model = MaskedViT(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2, rel_pos_bias=True)
    tokens = model.forward_features(torch.randn(2, 3, 16, 16))["x_norm_patchtokens"]
    # A random projection, not the sum: each token's LayerNorm output sums to a constant, so the sum's
    # true gradient is zero and only rounding would make it non-zero.
    (tokens * torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert model.rel_pos_bias.table.grad.abs().sum() > 0
    assert "rel_pos_bias.table" in model.no_weight_decay()
    assert model.layer_id("rel_pos_bias.table") == 4  # depth + 1, as BEiT's shared bias
