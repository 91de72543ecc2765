"""Packed multi-crop forward (``pack_crops``): same outputs and gradients as one pass per resolution."""

from __future__ import annotations

import pytest
import torch

from sslvit.backbones import MaskedViT
from sslvit.backbones.packed import PackLayout, _packed_residual


def vit(pack: bool, **kwargs) -> MaskedViT:
    torch.manual_seed(0)
    base = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, num_register_tokens=2)
    model = MaskedViT(**{**base, **kwargs}, pack_crops=pack)
    with torch.no_grad():  # zero-initialised tokens would hide a mix-up between groups
        model.mask_token.normal_()
        model.reg_token.normal_()
    return model


def crops() -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    torch.manual_seed(1)
    globals_, locals_ = torch.randn(4, 3, 32, 32), torch.randn(6, 3, 16, 16)
    masks = torch.rand(4, 16) < 0.4
    return [globals_, locals_], [masks, None]


def grads(model: MaskedViT) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fused_attn", [True, False])
def test_packed_forward_and_backward_match_one_pass_per_resolution(fused_attn: bool) -> None:
    images, masks = crops()
    outputs = {}
    models = {pack: vit(pack, fused_attn=fused_attn).train() for pack in (False, True)}
    for pack, model in models.items():
        outs = model.forward_features_list(images, masks)
        loss = sum((o["x_norm_clstoken"] ** 2).sum() + o["x_norm_patchtokens"].sum() for o in outs)
        loss.backward()
        outputs[pack] = outs
    for unpacked, packed in zip(outputs[False], outputs[True], strict=True):
        assert unpacked.keys() == packed.keys()
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens", "x_prenorm"):
            torch.testing.assert_close(packed[key], unpacked[key], atol=1e-5, rtol=1e-5, msg=key)
        assert packed["masks"] is unpacked["masks"]
    # Each group's output is its own: the local crops' CLS differs from what a global pass would give.
    assert outputs[True][1]["x_norm_clstoken"].shape == (6, 48)
    reference, packed_grads = grads(models[False]), grads(models[True])
    assert reference.keys() == packed_grads.keys() and "mask_token" in reference
    for name, grad in reference.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_attention_stays_within_each_image() -> None:
    model = vit(True).eval()
    images, masks = crops()
    with torch.no_grad():
        before = model.forward_features_list(images, masks)
        changed = [images[0].clone(), images[1].clone()]
        changed[1][3] = torch.randn(3, 16, 16)  # one local crop only
        after = model.forward_features_list(changed, masks)
    torch.testing.assert_close(after[0]["x_prenorm"], before[0]["x_prenorm"])  # globals untouched
    same = torch.ones(6, dtype=torch.bool)
    same[3] = False
    torch.testing.assert_close(after[1]["x_prenorm"][same], before[1]["x_prenorm"][same])
    assert not torch.allclose(after[1]["x_prenorm"][3], before[1]["x_prenorm"][3])


def test_one_batch_and_bad_inputs() -> None:
    model = vit(True).eval()
    images, masks = crops()
    with torch.no_grad():
        (single,) = model.forward_features_list(images[:1], masks[:1])
        torch.testing.assert_close(
            single["x_prenorm"], model.forward_features(images[0], masks[0])["x_prenorm"]
        )
    with pytest.raises(ValueError, match="2 image batches but 1 masks"):
        model.forward_features_list(images, masks[:1])
    with pytest.raises(ValueError, match="rel_pos_bias"):
        vit(True, rel_pos_bias=True).forward_features_list(images)


def test_subset_drop_path_skips_whole_sequences_per_group() -> None:
    torch.manual_seed(0)
    layout = PackLayout(((10, 3), (4, 2)))
    drop_path = torch.nn.Module()
    drop_path.drop_prob = 0.3  # type: ignore[assignment]
    x = torch.zeros(sum(layout.sizes), 5)
    out = _packed_residual(
        x, torch.nn.Identity(), lambda y, lay: torch.ones_like(y), layout, drop_path, subset=True
    )
    groups = layout.unpack(out)
    for group, (b, _), kept in zip(groups, layout.shapes, (7, 3), strict=True):  # round(b * 0.7)
        touched = group.flatten(1).abs().amax(1) > 0
        assert int(touched.sum()) == kept
        torch.testing.assert_close(group[touched], torch.full_like(group[touched], b / kept))
        assert torch.equal(group[~touched], torch.zeros_like(group[~touched]))


def test_timm_drop_path_draws_one_keep_per_sequence() -> None:
    torch.manual_seed(0)
    layout = PackLayout(((200, 3), (300, 2)))
    mask = layout.sample_mask(0.25, scale_by_keep=True, like=torch.empty(0))
    for group in layout.unpack(mask):
        assert torch.equal(group.amin(1), group.amax(1))  # constant over a sequence's tokens
        torch.testing.assert_close(group.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float(mask.mean()) - 1.0) < 0.1


@pytest.mark.parametrize("subset", [True, False])
def test_packed_training_with_drop_path_runs_and_keeps_eval_outputs(subset: bool) -> None:
    images, masks = crops()
    packed = vit(True, drop_path_rate=0.5, drop_path_subset=subset).train()
    outs = packed.forward_features_list(images, masks)
    sum(o["x_norm_clstoken"].sum() for o in outs).backward()
    assert packed.blocks[1].mlp.fc1.weight.grad is not None
    plain = vit(False, drop_path_rate=0.5, drop_path_subset=subset).eval()
    packed.eval()
    with torch.no_grad():
        for a, b in zip(
            packed.forward_features_list(images, masks), plain.forward_features_list(images, masks)
        ):
            torch.testing.assert_close(a["x_prenorm"], b["x_prenorm"], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_keeps_the_gradients() -> None:
    images, masks = crops()
    models = {ckpt: vit(True).train() for ckpt in (False, True)}
    models[True].set_grad_checkpointing(True)
    for model in models.values():
        outs = model.forward_features_list(images, masks)
        sum(o["x_norm_clstoken"].sum() for o in outs).backward()
    for name, grad in grads(models[False]).items():
        torch.testing.assert_close(grads(models[True])[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.slow  # torch.compile on the CPU
def test_compiled_packed_blocks_match_eager() -> None:
    images, masks = crops()
    eager, compiled = vit(True), vit(True, compile_blocks=True)
    out_e = eager.forward_features_list(images, masks)
    out_c = compiled.forward_features_list(images, masks)
    for a, b in zip(out_c, out_e, strict=True):
        torch.testing.assert_close(a["x_prenorm"], b["x_prenorm"], atol=1e-4, rtol=1e-4)
    sum(o["x_norm_clstoken"].sum() for o in out_c).backward()
    sum(o["x_norm_clstoken"].sum() for o in out_e).backward()
    for name, grad in grads(eager).items():
        torch.testing.assert_close(grads(compiled)[name], grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.slow  # torch.compile on the CPU
@pytest.mark.parametrize("subset", [True, False])
def test_compiled_packed_blocks_train_with_drop_path(subset: bool) -> None:
    """Stochastic depth per sequence (the kept subset and its scatter, or timm's draw) compiles and trains."""
    images, masks = crops()
    model = vit(True, compile_blocks=True, drop_path_rate=0.5, drop_path_subset=subset).train()
    outs = model.forward_features_list(images, masks)
    sum(o["x_norm_clstoken"].sum() for o in outs).backward()
    grads_ = grads(model)
    assert grads_ and all(torch.isfinite(g).all() for g in grads_.values())
