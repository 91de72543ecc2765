"""Unit tests for MaskedViT: shapes, masking, position-embedding interpolation, attention, helpers."""

from __future__ import annotations

import pytest
import torch
from toys import build_vit, vit_size

from sslvit.backbones import MaskedViT

D = vit_size("test")["embed_dim"]


def make_vit(**overrides) -> MaskedViT:
    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 8, **overrides}
    return build_vit("test", **kwargs).eval()


def images(batch: int = 2, height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def zero_patch_embed(vit: MaskedViT) -> None:
    """Make patch embeddings vanish so the prepared tokens are exactly the position embeddings."""
    with torch.no_grad():
        vit.patch_embed.proj.weight.zero_()
        vit.patch_embed.proj.bias.zero_()


@pytest.mark.parametrize(
    ("height", "width", "registers"),
    [(32, 32, 0), (64, 64, 0), (16, 48, 0), (32, 32, 4), (24, 40, 2)],
)
def test_output_shapes(height: int, width: int, registers: int) -> None:
    vit = make_vit(num_register_tokens=registers)
    n = (height // 8) * (width // 8)
    out = vit.forward_features(images(2, height, width))
    assert set(out) == {"x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm", "masks"}
    assert out["x_norm_clstoken"].shape == (2, D)
    assert out["x_norm_regtokens"].shape == (2, registers, D)
    assert out["x_norm_patchtokens"].shape == (2, n, D)
    assert out["x_prenorm"].shape == (2, 1 + registers + n, D)
    assert out["masks"] is None
    assert vit(images(2, height, width)).shape == (2, D)
    assert vit.num_prefix_tokens == 1 + registers and vit.num_register_tokens == registers
    assert vit.grid_size(height, width) == (height // 8, width // 8)


def test_properties_and_bad_input() -> None:
    vit = make_vit()
    assert vit.patch_size == 8 and vit.embed_dim == D
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vit(images(1, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        vit(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="masks shape"):
        vit(images(2), torch.zeros(2, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        vit(images(2), torch.zeros(2, 16))


def test_forward_is_normalised_cls_and_registers_are_separate() -> None:
    vit = make_vit(num_register_tokens=3)
    x = images()
    out = vit.forward_features(x)
    x_norm = vit.norm(out["x_prenorm"])
    torch.testing.assert_close(vit(x), x_norm[:, 0])
    torch.testing.assert_close(out["x_norm_regtokens"], x_norm[:, 1:4])
    torch.testing.assert_close(out["x_norm_patchtokens"], x_norm[:, 4:])
    # Register slots carry reg_token + its position entry, not patch content.
    tokens = vit.prepare_tokens(x)
    torch.testing.assert_close(tokens[:, 1:4], (vit.reg_token + vit.pos_embed[:, 1:4]).expand(2, -1, -1))


def test_masked_tokens_replaced_before_position_embedding() -> None:
    vit = make_vit(num_register_tokens=2)
    with torch.no_grad():
        vit.mask_token.normal_()
    x = images()
    masks = torch.rand(2, 16, generator=torch.Generator().manual_seed(2)) < 0.4
    masks[0, 0], masks[1, 0] = True, False  # both cases present in every run
    plain = vit.prepare_tokens(x)
    masked = vit.prepare_tokens(x, masks)
    prefix = vit.num_prefix_tokens
    changed = (plain != masked).any(dim=-1)  # (B, T)
    assert not changed[:, :prefix].any()
    assert torch.equal(changed[:, prefix:], masks)
    expected = (vit.mask_token + vit.pos_embed[:, prefix:]).expand(2, -1, -1)
    torch.testing.assert_close(masked[:, prefix:][masks], expected[masks])
    # ...and the masked forward is what the blocks see.
    out = vit.forward_features(x, masks)
    assert out["masks"] is masks
    assert not torch.allclose(out["x_norm_clstoken"], vit(x))
    # The mask token is learned: it gets a gradient from a masked forward, none from an unmasked one.
    # A random projection of the output, not its sum: the sum of a LayerNorm output (the final norm)
    # does not depend on its input, so its true gradient is zero and only rounding made it non-zero.
    projection = torch.randn(vit(x).shape, generator=torch.Generator().manual_seed(3))
    (vit(x, masks) * projection).sum().backward()
    assert vit.mask_token.grad is not None and vit.mask_token.grad.abs().sum() > 0
    vit.zero_grad(set_to_none=True)
    (vit(x) * projection).sum().backward()
    assert vit.mask_token.grad is None or not vit.mask_token.grad.any()


def test_all_false_mask_equals_unmasked() -> None:
    vit = make_vit(num_register_tokens=1)
    with torch.no_grad():
        vit.mask_token.normal_()
    x = images(2, 24, 40)
    out = vit.forward_features(x, torch.zeros(2, 15, dtype=torch.bool))
    ref = vit.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
        assert torch.equal(out[key], ref[key]), key


def test_pos_embed_native_size_is_stored_table() -> None:
    vit = make_vit()
    zero_patch_embed(vit)
    tokens = vit.prepare_tokens(images())
    assert torch.equal(tokens[:, 1:], vit.pos_embed[:, 1:].expand(2, -1, -1))
    torch.testing.assert_close(tokens[:, 0], (vit.cls_token + vit.pos_embed[:, :1])[:, 0].expand(2, -1))


def test_pos_embed_constant_stays_constant_at_other_sizes() -> None:
    vit = make_vit()
    zero_patch_embed(vit)
    with torch.no_grad():
        vit.pos_embed.fill_(0.37)
    for height, width in [(64, 64), (16, 16), (24, 56)]:
        tokens = vit.prepare_tokens(images(1, height, width))
        torch.testing.assert_close(tokens[:, 1:], torch.full_like(tokens[:, 1:], 0.37))


def test_pos_embed_ramp_interpolation_hand_checked() -> None:
    # Native grid 6x6 with pos = column index; bicubic, align_corners=False: output column c of a
    # 2x-wider grid samples source x = (c + 0.5) / 2 - 0.5, and cubic convolution reproduces a linear
    # ramp exactly wherever all four taps are inside the grid (x in [1, 4) -> c in 3..8).
    vit = make_vit(img_size=48)
    zero_patch_embed(vit)
    with torch.no_grad():
        ramp = torch.arange(6.0).repeat(6)  # row-major (6, 6) grid of column indices
        vit.pos_embed[0, 1:] = ramp[:, None].expand(-1, D)
        vit.pos_embed[0, 0] = -7.0  # the CLS entry is not part of the grid and must stay as is
    tokens = vit.prepare_tokens(images(1, 96, 96))
    grid = tokens[0, 1:, 0].view(12, 12)
    assert torch.allclose(tokens[0, 0], vit.cls_token[0, 0] - 7.0)
    assert torch.allclose(grid, grid[:1].expand(12, -1))  # still constant down each column
    expected = torch.tensor([(c + 0.5) / 2 - 0.5 for c in range(3, 9)])  # 1.25, 1.75, ..., 3.75
    torch.testing.assert_close(grid[0, 3:9], expected)
    assert (grid[0, 1:] > grid[0, :-1]).all()  # monotone up to the borders
    # Non-square: only the width changes, so each row keeps exactly its native values.
    with torch.no_grad():
        vit.pos_embed[0, 1:] = torch.arange(6.0).repeat_interleave(6)[:, None].expand(-1, D)  # row index
    rows = vit.prepare_tokens(images(1, 48, 96))[0, 1:, 0].view(6, 12)
    torch.testing.assert_close(rows, torch.arange(6.0)[:, None].expand(6, 12))


def test_last_selfattention_matches_block() -> None:
    vit = make_vit(num_register_tokens=2)
    x = images(2, 32, 48)
    attn = vit.get_last_selfattention(x)
    tokens = 1 + 2 + 4 * 6
    assert attn.shape == (2, 2, tokens, tokens)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, tokens))
    # Rebuild the last block's attention output from these weights; it must equal timm's own output.
    with torch.no_grad():
        hidden = vit.blocks[:-1](vit.prepare_tokens(x))
        block = vit.blocks[-1]
        y = block.norm1(hidden)
        v = block.attn.qkv(y).reshape(2, tokens, 3, 2, D // 2)[:, :, 2].transpose(1, 2)  # (B, heads, T, hd)
        rebuilt = block.attn.proj((attn @ v).transpose(1, 2).reshape(2, tokens, D))
        torch.testing.assert_close(rebuilt, block.attn(y), atol=1e-5, rtol=1e-4)


def test_intermediate_layers() -> None:
    vit = make_vit(num_register_tokens=1)
    x = images()
    out = vit.forward_features(x)
    layers = vit.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and all(p.shape == (2, 16, D) and c.shape == (2, D) for p, c in layers)
    torch.testing.assert_close(layers[-1][0], out["x_norm_patchtokens"])
    torch.testing.assert_close(layers[-1][1], out["x_norm_clstoken"])
    raw = vit.get_intermediate_layers(x, n=[-1], norm=False)
    torch.testing.assert_close(raw[0][1], out["x_prenorm"][:, 0])
    torch.testing.assert_close(raw[0][0], out["x_prenorm"][:, 2:])
    first = vit.get_intermediate_layers(x, n=[0])[0][1]
    assert not torch.allclose(first, out["x_norm_clstoken"])
    with pytest.raises(ValueError, match="outside"):
        vit.get_intermediate_layers(x, n=3)


def test_layer_id_and_no_weight_decay() -> None:
    vit = make_vit(num_register_tokens=4)
    expected = {
        "cls_token": 0,
        "reg_token": 0,
        "pos_embed": 0,
        "mask_token": 0,
        "patch_embed.proj.weight": 0,
        "blocks.0.attn.qkv.weight": 1,
        "blocks.1.mlp.fc2.bias": 2,
        "norm.weight": 3,
        "norm.bias": 3,
    }
    for name, layer in expected.items():
        assert vit.layer_id(name) == layer, name
    names = {name for name, _ in vit.named_parameters()}
    assert set(expected) <= names
    assert all(0 <= vit.layer_id(name) <= 3 for name in names)
    with pytest.raises(ValueError, match="unknown MaskedViT parameter"):
        vit.layer_id("backbone.blocks.0.attn.qkv.weight")
    assert vit.no_weight_decay() == {"pos_embed", "cls_token", "reg_token", "mask_token"}
    assert make_vit().no_weight_decay() == {"pos_embed", "cls_token", "mask_token"}


def test_drop_path_layerscale_and_eval_determinism() -> None:
    vit = make_vit(drop_path_rate=0.5, layerscale_init=0.1)
    assert vit.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)
    assert torch.allclose(vit.blocks[0].ls1.gamma, torch.full((D,), 0.1))
    x = images()
    assert torch.equal(vit(x), vit(x))  # eval: no stochastic depth
    vit.train()
    torch.manual_seed(3)
    a = vit(torch.cat([x] * 8))
    b = vit(torch.cat([x] * 8))
    assert not torch.allclose(a, b)  # train: some residual branches are dropped
    assert isinstance(make_vit().blocks[0].ls1, torch.nn.Identity)  # no LayerScale unless asked


def test_uniform_drop_path_sets_every_block_and_keeps_the_state_dict() -> None:
    linear, uniform = make_vit(drop_path_rate=0.3), make_vit(drop_path_rate=0.3, drop_path_uniform=True)
    assert isinstance(linear.blocks[0].drop_path1, torch.nn.Identity)  # timm: 0 at the first block
    for block in uniform.blocks:
        assert block.drop_path1.drop_prob == block.drop_path2.drop_prob == pytest.approx(0.3)
    assert uniform.state_dict().keys() == linear.state_dict().keys()
    for key, value in linear.state_dict().items():
        assert torch.equal(uniform.state_dict()[key], value)  # same seed, same weights
    assert isinstance(make_vit(drop_path_uniform=True).blocks[0].drop_path1, torch.nn.Identity)
