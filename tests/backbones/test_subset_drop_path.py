import pytest
import torch
from timm.models.vision_transformer import Block

from sslvit.backbones import MaskedViT
from sslvit.backbones.subset_drop_path import SubsetDropPathBlock, subset_residual


def test_subset_residual_updates_exactly_the_kept_samples_rescaled():
    torch.manual_seed(0)
    x = torch.zeros(10, 3, 4)
    out = subset_residual(x, torch.ones_like, drop_prob=0.3)
    touched = out.flatten(1).abs().sum(1) > 0
    assert int(touched.sum()) == 7  # round(10 * 0.7) samples computed, the other 3 skipped
    assert torch.allclose(out[touched], torch.full((7, 3, 4), 10 / 7))
    assert torch.equal(out[~touched], torch.zeros(3, 3, 4))


def test_subset_residual_is_unbiased():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    weight = torch.randn(5, 5)
    draws = 4000
    mean = torch.stack([subset_residual(x, lambda y: y @ weight, 0.5) for _ in range(draws)]).mean(0)
    # At drop 0.5 each draw adds 0 or 2 f(x): the mean's standard error is |f(x)| / sqrt(draws).
    branch = x @ weight
    z = (mean - x - branch).abs() / (branch.abs() / draws**0.5 + 1e-6)
    assert z.max() < 5


def test_subset_residual_keeps_a_batch_of_one():
    x = torch.zeros(1, 2)
    assert torch.equal(subset_residual(x, torch.ones_like, drop_prob=0.9), torch.ones(1, 2))


def _blocks(drop_prob: float) -> tuple[Block, SubsetDropPathBlock]:
    torch.manual_seed(0)
    plain = Block(dim=16, num_heads=2, drop_path=drop_prob)
    subset = SubsetDropPathBlock(dim=16, num_heads=2, drop_path=drop_prob)
    subset.load_state_dict(plain.state_dict())
    return plain, subset


def test_block_is_timms_outside_training_and_without_drop_path():
    x = torch.randn(4, 5, 16)
    plain, subset = _blocks(0.4)
    plain.eval(), subset.eval()
    assert torch.allclose(subset(x), plain(x), atol=1e-6)
    plain, subset = _blocks(0.0)
    assert torch.allclose(subset(x), plain(x), atol=1e-6)  # training mode, nothing to drop


def test_block_skips_dropped_samples_in_training():
    torch.manual_seed(1)
    x = torch.randn(10, 5, 16)
    plain, subset = _blocks(0.5)
    plain.eval()
    full = plain(x)  # both branches on every sample
    out = subset(x)
    # Each sample either keeps x (both branches dropped) or differs from it; at drop 0.5 with 10 samples
    # each branch runs on exactly 5, so at most 10 and at least 5 samples change.
    changed = (out - x).flatten(1).abs().amax(1) > 1e-6
    assert 5 <= int(changed.sum()) <= 10
    assert not torch.allclose(out, full)
    out.sum().backward()
    assert subset.mlp.fc1.weight.grad is not None


def test_block_rejects_per_sample_masks():
    _, subset = _blocks(0.5)
    with pytest.raises(ValueError, match="per-sample attention masks"):
        subset(torch.randn(2, 5, 16), attn_mask=torch.zeros(2, 2, 5, 5))


def test_masked_vit_switch_keeps_the_state_dict_and_eval_outputs():
    kwargs = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.3)
    torch.manual_seed(0)
    subset = MaskedViT(**kwargs, drop_path_subset=True)
    plain = MaskedViT(**kwargs, drop_path_subset=False)
    assert isinstance(subset.blocks[0], SubsetDropPathBlock)
    assert type(plain.blocks[0]) is Block
    plain.load_state_dict(subset.state_dict(), strict=True)
    images = torch.randn(3, 3, 16, 16)
    assert torch.allclose(subset.eval()(images), plain.eval()(images), atol=1e-6)
