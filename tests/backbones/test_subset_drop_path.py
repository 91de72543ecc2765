import pytest
import torch
from timm.models.vision_transformer import Block

from sslvit.backbones import MaskedViT
from sslvit.backbones.subset_drop_path import SubsetDropPathBlock, add_rows, subset_residual


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


def test_norm_before_the_gather_equals_norm_after_it():
    x = torch.randn(6, 5, 16, requires_grad=True)
    norm, weight = torch.nn.LayerNorm(16), torch.randn(16, 16)
    torch.manual_seed(3)
    first = subset_residual(x, lambda y: y @ weight, 0.5, norm=norm)
    torch.manual_seed(3)
    after = subset_residual(x, lambda y: norm(y) @ weight, 0.5)
    torch.testing.assert_close(first, after)
    (g_first,) = torch.autograd.grad(first.sum(), x)
    (g_after,) = torch.autograd.grad(after.sum(), x)
    torch.testing.assert_close(g_first, g_after)


def _saved_bytes(block: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for one training forward of ``block``, the input not counted."""
    seen: set[int] = {x.untyped_storage().data_ptr()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in seen:  # each storage once (views share it)
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    return total


def test_skipping_dropped_samples_keeps_less_for_backward_than_timms_drop_path():
    """Gathering the kept samples must not cost a copy that outweighs the skipped activations."""
    x = torch.randn(40, 17, 16, requires_grad=True)
    for drop_prob in (0.1, 0.3):
        plain, subset = _blocks(drop_prob)
        assert _saved_bytes(subset.train(), x) < _saved_bytes(plain.train(), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the training setting: bf16 branch activations
            assert _saved_bytes(subset.train(), x) < _saved_bytes(plain.train(), x)


@pytest.mark.parametrize("per_row_scale", [False, True])
def test_add_rows_equals_index_add_with_its_gradients(per_row_scale):
    x = torch.randn(7, 3, requires_grad=True)
    rows = torch.randn(4, 3, dtype=torch.bfloat16, requires_grad=True)
    index = torch.tensor([5, 0, 2, 6])
    scale = torch.rand(4, 1) + 0.5 if per_row_scale else 1.75
    out = add_rows(x, index, rows, scale)
    weights = torch.randn(7, 3)
    grads = torch.autograd.grad((out * weights).sum(), (x, rows))
    source = rows.float() * scale if per_row_scale else rows.float() * 1.75
    ref = x.index_add(0, index, source)
    ref_grads = torch.autograd.grad((ref * weights).sum(), (x, rows))
    torch.testing.assert_close(out, ref)
    assert grads[1].dtype == torch.bfloat16
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.slow  # torch.compile on the CPU
def test_block_compiles_into_one_graph_in_training():
    """``compile_blocks`` compiles each block: skipping samples (random subset, the custom scatter)
    must not break the graph."""
    _, subset = _blocks(0.5)
    compiled = torch.compile(subset.train(), fullgraph=True)
    x = torch.randn(8, 5, 16, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    changed = (out - x).detach().flatten(1).abs().amax(1) > 1e-6
    assert 4 <= int(changed.sum()) <= 8  # each branch runs on 4 of the 8 samples
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert subset.mlp.fc1.weight.grad is not None
