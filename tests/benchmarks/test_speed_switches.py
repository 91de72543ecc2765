"""The speed switches keep the numbers: SDPA vs explicit attention, compiled blocks vs eager,
and FLOPs counted with the fused attention included (hand-computed for a small ViT)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.measure import count_flops
from sslvit.backbones import MaskedViT


def small_vit(**kwargs) -> MaskedViT:
    torch.manual_seed(0)
    return MaskedViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, **kwargs)


def test_fused_attention_switch_gives_the_same_features() -> None:
    images = torch.randn(3, 3, 32, 32)
    masks = torch.zeros(3, 16, dtype=torch.bool)
    masks[:, :5] = True
    fused, explicit = small_vit(fused_attn=True), small_vit(fused_attn=False)
    assert all(b.attn.fused_attn for b in fused.blocks) and not any(
        b.attn.fused_attn for b in explicit.blocks
    )
    torch.testing.assert_close(fused(images, masks), explicit(images, masks), atol=1e-5, rtol=1e-5)


def test_counted_flops_match_the_hand_count_with_fused_attention() -> None:
    # B=2 images of 32 px, patch 8 -> N=16 patches, T=17 tokens, D=48, depth 2, MLP 4D.
    vit = small_vit(fused_attn=True)
    images = torch.randn(2, 3, 32, 32)
    b, n, t, d = 2, 16, 17, 48
    patch_embed = 2 * b * n * (3 * 8 * 8) * d
    per_block = 2 * b * t * (d * 3 * d + d * d + 2 * d * 4 * d) + 2 * 2 * b * t * t * d  # linears + qk^T, av
    expected = patch_embed + 2 * per_block
    with torch.no_grad():
        counted = count_flops(vit, lambda: vit(images))
    assert counted == expected
    assert all(blk.attn.fused_attn for blk in vit.blocks)  # restored after counting


@pytest.mark.slow  # torch.compile on the CPU takes ~1 minute here
def test_compiled_blocks_match_eager_and_survive_deepcopy() -> None:
    eager, compiled = small_vit(), small_vit(compile_blocks=True)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    images = torch.randn(2, 3, 32, 32)
    out = compiled(images)
    out.sum().backward()
    eager(images).sum().backward()
    torch.testing.assert_close(out, eager(images), atol=1e-4, rtol=1e-4)
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)
    # An EMA teacher is a deep copy: it must run with its own weights, not the original's.
    teacher = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
        eager_copy = copy.deepcopy(eager)
        for p in eager_copy.parameters():
            p.mul_(0.5)
        torch.testing.assert_close(teacher(images), eager_copy(images), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # compiles a whole DINOv2 step on the CPU
def test_compiled_step_gives_the_eager_loss(tmp_path: Path) -> None:
    from benchmarks import step

    args = [
        "--method", "dinov2", "--arch", "vit_test", "--patch", "8", "--global-size", "32",
        "--local-size", "16", "--num-local", "2", "--batch", "4", "--warmup", "0", "--steps", "3",
        "--precision", "32", "--device", "cpu", "--override", "method.out_dim=64",
        "--override", "method.hidden_dim=32", "--override", "method.bottleneck_dim=16",
    ]  # fmt: skip
    eager = step.main(args)["rows"][0]
    compiled = step.main([*args, "--compile"])["rows"][0]
    assert compiled["compile"] and not eager["compile"]
    assert compiled["loss_first"] == pytest.approx(eager["loss_first"], rel=1e-4)
    assert compiled["loss_last"] == pytest.approx(eager["loss_last"], rel=1e-3)


def test_subset_drop_path_executes_fewer_flops() -> None:
    images = torch.randn(8, 3, 32, 32)
    counted = {}
    for subset in (False, True):
        vit = small_vit(drop_path_rate=0.5, drop_path_subset=subset).train()
        counted[subset] = count_flops(vit, lambda vit=vit: vit(images).sum().backward())
    # Block 0 has rate 0 and block 1 has 0.5: its branches run on 4 of the 8 samples.
    assert counted[True] < counted[False]
    assert counted[True] > 0.6 * counted[False]


@pytest.mark.parametrize("method", ["dino", "ibot", "dinov2"])
def test_packed_crops_step_gives_the_unpacked_losses(method: str) -> None:
    from benchmarks import step

    args = [
        "--method", method, "--arch", "vit_test", "--patch", "8", "--global-size", "32",
        "--local-size", "16", "--num-local", "2", "--batch", "4", "--warmup", "0", "--steps", "3",
        "--precision", "32", "--device", "cpu", "--override", "method.out_dim=64",
        "--override", "method.hidden_dim=32", "--override", "method.bottleneck_dim=16",
    ]  # fmt: skip
    # Stochastic depth draws differently packed (one draw per group either way): compare without it.
    args += ["--override", "backbone.drop_path_rate=0"]
    grouped = step.main(args)["rows"][0]
    packed = step.main([*args, "--pack-crops"])["rows"][0]
    assert packed["pack_crops"] and not grouped["pack_crops"]
    # Three optimizer steps: the packed student follows the same trajectory, not just the first loss.
    assert packed["loss_first"] == pytest.approx(grouped["loss_first"], rel=1e-5)
    assert packed["loss_last"] == pytest.approx(grouped["loss_last"], rel=1e-4)
