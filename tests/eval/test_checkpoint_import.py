"""Released-checkpoint layouts (DINO, iBOT, DINOv2) map onto MaskedViT with the source's exact outputs.

Synthetic state dicts with random weights on a tiny ViT stand in for the released files. References:
timm's ``VisionTransformer`` for DINO / iBOT (same keys and forward as their ViT), and for DINOv2 a
functional forward written from the paper's token layout (position embedding on CLS + patches,
registers inserted afterwards, LayerScale ``gamma``), fed the DINOv2-named weights directly.
"""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from timm.models.vision_transformer import VisionTransformer
from toys import TINY, compose_train_cfg

from sslvit.backbones import MaskedViT
from sslvit.backbones.rel_pos_bias import relative_position_index
from sslvit.eval.checkpoint_import import import_backbone_state, load_any_checkpoint
from sslvit.evaluate import load_backbone
from sslvit.train import init_backbones

ARCH = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def random_timm_vit(seed: int, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(**{**ARCH, "num_classes": 0, **kwargs}).eval()
    with torch.no_grad():
        for p in vit.parameters():  # every tensor random, norms and biases included
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == 32 else 0.0))
    return vit


def images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def build(imported) -> MaskedViT:
    backbone = MaskedViT(**{**imported.arch, "num_heads": ARCH["num_heads"]}).eval()
    state = dict(imported.state)
    state.setdefault("mask_token", torch.zeros(1, 1, ARCH["embed_dim"]))
    backbone.load_state_dict(state, strict=True)
    return backbone


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_dino_full_checkpoint_prefers_the_teacher_and_loads_safely(tmp_path):
    teacher, student = random_timm_vit(0), random_timm_vit(1)
    checkpoint = {
        "teacher": {
            **{f"backbone.{k}": v for k, v in teacher.state_dict().items()},
            "head.mlp.0.weight": torch.randn(64, 32),
        },
        "student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
        "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16),  # pickled in DINO's files
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)
    imported = import_backbone_state(load_any_checkpoint(path))
    assert (imported.layout, imported.prefix) == ("dino", "teacher.backbone.")
    assert "mask_token" not in imported.state and not any(k.startswith("head") for k in imported.state)
    assert {k: imported.arch[k] for k in ("img_size", "patch_size", "embed_dim", "depth")} == {
        k: ARCH[k] for k in ("img_size", "patch_size", "embed_dim", "depth")
    }
    x = images()
    with torch.no_grad():
        assert max_diff(build(imported)(x), teacher(x)) < 1e-5


def test_ibot_masked_embed_becomes_the_mask_token():
    reference = random_timm_vit(2)
    masked_embed = torch.randn(1, 32)
    checkpoint = {"state_dict": {**reference.state_dict(), "masked_embed": masked_embed}}
    imported = import_backbone_state(checkpoint)
    assert imported.layout == "ibot"
    backbone = build(imported)
    assert torch.equal(backbone.mask_token, masked_embed.view(1, 1, 32))
    x = images()
    with torch.no_grad():
        assert max_diff(backbone(x), reference(x)) < 1e-5
        # A fully masked image is position embeddings + the imported token, whatever the pixels.
        mask = torch.ones(3, 16, dtype=torch.bool)
        torch.testing.assert_close(backbone(x, mask), backbone(torch.zeros_like(x), mask))


def dinov2_state(registers: int, chunks: int) -> dict[str, torch.Tensor]:
    """A DINOv2-named state dict: 1 + N position rows, register_tokens, (1, D) mask token, ls gammas."""
    g = torch.Generator().manual_seed(3)
    d, n, hidden = 32, 16, 128

    def rnd(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.2 + mean

    state = {
        "cls_token": rnd(1, 1, d),
        "pos_embed": rnd(1, 1 + n, d),
        "mask_token": rnd(1, d),
        "patch_embed.proj.weight": rnd(d, 3, 4, 4),
        "patch_embed.proj.bias": rnd(d),
        "norm.weight": rnd(d, mean=1.0),
        "norm.bias": rnd(d),
    }
    if registers:
        state["register_tokens"] = rnd(1, registers, d)
    per_chunk = ARCH["depth"] // chunks
    for i in range(ARCH["depth"]):
        # BlockChunk keeps global indices inside each chunk: blocks.<chunk>.<i>.
        prefix = f"blocks.{i // per_chunk}.{i}." if chunks > 1 else f"blocks.{i}."
        for name, shape in {
            "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d),
            "attn.qkv.bias": (3 * d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,),
            "ls1.gamma": (d,), "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (hidden, d),
            "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (d, hidden), "mlp.fc2.bias": (d,),
            "ls2.gamma": (d,),
        }.items():  # fmt: skip
            state[prefix + name] = rnd(*shape, mean=1.0 if name.startswith("norm") else 0.0)
    return state


def dinov2_reference(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """DINOv2's forward from its own weight names: returns the normalised CLS token."""
    flat = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and parts[2].isdigit():
            key = ".".join(["blocks", *parts[2:]])
        flat[key] = value
    tokens = F.conv2d(x, flat["patch_embed.proj.weight"], flat["patch_embed.proj.bias"], stride=4)
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D)
    b, _, d = tokens.shape
    tokens = torch.cat([flat["cls_token"].expand(b, -1, -1), tokens], dim=1) + flat["pos_embed"]
    if "register_tokens" in flat:  # registers carry no position: inserted after the addition
        tokens = torch.cat([tokens[:, :1], flat["register_tokens"].expand(b, -1, -1), tokens[:, 1:]], dim=1)
    for i in range(ARCH["depth"]):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in flat.items() if k.startswith(f"blocks.{i}.")}
        y = F.layer_norm(tokens, (d,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv = F.linear(y, p["attn.qkv.weight"], p["attn.qkv.bias"]).view(b, -1, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, d)
        tokens = tokens + p["ls1.gamma"] * F.linear(y, p["attn.proj.weight"], p["attn.proj.bias"])
        y = F.layer_norm(tokens, (d,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"])
        tokens = tokens + p["ls2.gamma"] * (y + p["mlp.fc2.bias"])
    return F.layer_norm(tokens, (d,), flat["norm.weight"], flat["norm.bias"], eps=1e-6)[:, 0]


@pytest.mark.parametrize(("registers", "chunks"), [(4, 2), (0, 1)])
def test_dinov2_registers_chunks_and_layerscale_match_its_forward(registers, chunks):
    state = dinov2_state(registers, chunks)
    imported = import_backbone_state({"model": {f"teacher.backbone.{k}": v for k, v in state.items()}})
    assert imported.layout == "dinov2"
    assert imported.arch["num_register_tokens"] == registers
    assert imported.arch["layerscale_init"] is not None
    # Registers get a zero position row so that "add, then insert" equals "insert, then add".
    assert imported.state["pos_embed"].shape == (1, 1 + registers + 16, 32)
    assert imported.state["pos_embed"][:, 1 : 1 + registers].abs().sum() == 0
    backbone = build(imported)
    x = images()
    with torch.no_grad():
        assert max_diff(backbone(x), dinov2_reference(state, x)) < 1e-5


def test_eval_checkpoint_accepts_a_release_file(tmp_path):
    state = dinov2_state(registers=4, chunks=1)
    path = tmp_path / "dinov2_vits14_reg4.pth"
    torch.save(state, path)
    backbone, run_cfg, imported = load_backbone(str(path), {"num_heads": 2})
    assert run_cfg is None and imported.layout == "dinov2"
    x = images()
    with torch.no_grad():
        assert max_diff(backbone(x), dinov2_reference(state, x)) < 1e-5


def test_init_from_a_dino_release_sets_student_and_teacher(tmp_path):
    cfg = compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true"])
    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))
    own = model.student["backbone"]
    release = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=own.patch_embed.img_size,
        patch_size=own.patch_size, embed_dim=own.embed_dim, depth=len(own.blocks), num_heads=2,
    ).eval()  # fmt: skip
    path = tmp_path / "dino_backbone.pth"
    torch.save(release.state_dict(), path)
    init_backbones(model, str(path))
    x = torch.randn(2, 3, *own.patch_embed.img_size)
    with torch.no_grad():
        for network in (model.student, model.teacher):
            assert max_diff(network["backbone"].eval()(x), release(x)) < 1e-5


def test_unknown_file_is_refused_by_name():
    with pytest.raises(ValueError, match="cls_token"):
        import_backbone_state({"state_dict": {"encoder.weight": torch.zeros(2)}})


def beit_index(side: int) -> torch.Tensor:
    """BEiT's relative_position_index, written from the paper's description (CLS rows last)."""
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    rows = (2 * side - 1) ** 2
    index = torch.empty(1 + side * side, 1 + side * side, dtype=torch.int64)
    index[1:, 1:] = (
        (ys[:, None] - ys[None, :] + side - 1) * (2 * side - 1) + xs[:, None] - xs[None, :] + side - 1
    )
    index[0, :], index[:, 0], index[0, 0] = rows, rows + 1, rows + 2
    return index


def beit_state(
    d: int = 32, depth: int = 2, heads: int = 2, side: int = 4, shared: bool = True, abs_pos: bool = False,
    v2: bool = False, seed: int = 9,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """A BEiT-named pretraining state dict with random values everywhere (q/v biases, gammas, table)."""
    g = torch.Generator().manual_seed(seed)
    hidden, rows = 4 * d, (2 * side - 1) ** 2 + 3

    def rnd(*shape, mean=0.0):
        return torch.randn(*shape, generator=g) * 0.2 + mean

    state = {
        "cls_token": rnd(1, 1, d), "mask_token": rnd(1, 1, d), "patch_embed.proj.weight": rnd(d, 3, 4, 4),
        "patch_embed.proj.bias": rnd(d), "norm.weight": rnd(d, mean=1.0), "norm.bias": rnd(d),
        "lm_head.weight": rnd(64, d), "lm_head.bias": rnd(64),
    }  # fmt: skip
    if abs_pos:
        state["pos_embed"] = rnd(1, 1 + side * side, d)
    table = torch.randn(rows, heads, generator=g)  # std 1: a bias that clearly changes the output
    if shared:
        state["rel_pos_bias.relative_position_bias_table"] = table
        state["rel_pos_bias.relative_position_index"] = beit_index(side)
    for i in range(depth):
        for name, shape in {
            "norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.q_bias": (d,),
            "attn.v_bias": (d,), "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "gamma_1": (d,),
            "norm2.weight": (d,), "norm2.bias": (d,), "mlp.fc1.weight": (hidden, d),
            "mlp.fc1.bias": (hidden,), "mlp.fc2.weight": (d, hidden), "mlp.fc2.bias": (d,), "gamma_2": (d,),
        }.items():  # fmt: skip
            state[f"blocks.{i}.{name}"] = rnd(*shape, mean=1.0 if name.startswith("norm") else 0.0)
        if not shared:
            state[f"blocks.{i}.attn.relative_position_bias_table"] = table.clone()
            state[f"blocks.{i}.attn.relative_position_index"] = beit_index(side)
    if v2:  # the CLS-pretraining branch: extra blocks on top, not part of the backbone
        state["cls_pt_layers.0.attn.qkv.weight"] = rnd(3 * d, d)
        state["cls_pt_layers.0.gamma_1"] = rnd(d)
        state["cls_pt_norm.weight"] = rnd(d)
    return state


def beit_reference(state: dict[str, torch.Tensor], x: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """BEiT's forward from its own weight names: returns the normalised CLS token."""
    weight = state["patch_embed.proj.weight"]
    tokens = F.conv2d(x, weight, state["patch_embed.proj.bias"], stride=weight.shape[-1])
    tokens = tokens.flatten(2).transpose(1, 2)
    b, _, d = tokens.shape
    tokens = torch.cat([state["cls_token"].expand(b, -1, -1), tokens], dim=1)
    if "pos_embed" in state:
        tokens = tokens + state["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in state.items() if k.startswith(f"blocks.{i}.")}
        table = state.get(
            "rel_pos_bias.relative_position_bias_table", p.get("attn.relative_position_bias_table")
        )
        index = state.get("rel_pos_bias.relative_position_index", p.get("attn.relative_position_index"))
        bias = table[index].permute(2, 0, 1)  # (heads, T, T)
        y = F.layer_norm(tokens, (d,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv_bias = torch.cat([p["attn.q_bias"], torch.zeros_like(p["attn.q_bias"]), p["attn.v_bias"]])
        qkv = F.linear(y, p["attn.qkv.weight"], qkv_bias).view(b, -1, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, d)
        tokens = tokens + p["gamma_1"] * F.linear(y, p["attn.proj.weight"], p["attn.proj.bias"])
        y = F.layer_norm(tokens, (d,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"])
        tokens = tokens + p["gamma_2"] * (y + p["mlp.fc2.bias"])
    return F.layer_norm(tokens, (d,), state["norm.weight"], state["norm.bias"], eps=1e-6)[:, 0]


def test_our_relative_index_is_beits():
    # Same convention, so a released table maps row for row.
    assert torch.equal(relative_position_index((4, 4), (4, 4), num_prefix=1), beit_index(4))


@pytest.mark.parametrize(
    ("shared", "abs_pos", "v2"), [(True, False, False), (False, True, False), (True, True, True)]
)
def test_beit_release_matches_its_forward(shared, abs_pos, v2):
    state = beit_state(shared=shared, abs_pos=abs_pos, v2=v2)
    imported = import_backbone_state({"model": state})
    assert imported.layout == ("beitv2" if v2 else "beit")
    assert imported.arch["rel_pos_bias"] is True and imported.arch["num_heads"] == 2
    assert imported.arch["img_size"] == 16 and imported.arch["qkv_bias"] is True
    assert not any(k.startswith(("lm_head", "cls_pt_")) for k in imported.state)
    # The k bias is zero; q and v keep the file's values.
    torch.testing.assert_close(imported.state["blocks.0.attn.qkv.bias"][32:64], torch.zeros(32))
    if not abs_pos:
        assert imported.state["pos_embed"].abs().sum() == 0
    backbone = MaskedViT(**imported.arch).eval()
    backbone.load_state_dict(imported.state, strict=True)
    assert torch.equal(backbone.mask_token, state["mask_token"])
    x = images()
    with torch.no_grad():
        assert max_diff(backbone(x), beit_reference(state, x)) < 1e-5


def test_beit_table_in_another_row_order_is_reordered():
    state = beit_state()
    perm = torch.randperm(52, generator=torch.Generator().manual_seed(0))  # 7 * 7 + 3 rows
    # The same model, its table rows stored in another order and its index pointing there.
    state["rel_pos_bias.relative_position_bias_table"] = state["rel_pos_bias.relative_position_bias_table"][
        perm
    ]
    state["rel_pos_bias.relative_position_index"] = torch.argsort(perm)[beit_index(4)]
    imported = import_backbone_state(state)
    backbone = MaskedViT(**imported.arch).eval()
    backbone.load_state_dict(imported.state, strict=True)
    x = images()
    with torch.no_grad():
        assert max_diff(backbone(x), beit_reference(state, x)) < 1e-5


def test_beit_files_that_cannot_be_mapped_are_refused_by_name():
    state = beit_state(shared=False)
    state["blocks.1.attn.relative_position_bias_table"] = (
        state["blocks.1.attn.relative_position_bias_table"] + 1
    )
    with pytest.raises(ValueError, match="different relative position bias table per block"):
        import_backbone_state(state)
    state = beit_state()
    # Patch 0 -> patch 1 reads the zero-offset row; other pairs one column apart do not: not relative.
    state["rel_pos_bias.relative_position_index"][1, 2] = beit_index(4)[1, 1]
    with pytest.raises(ValueError, match="relabelling"):
        import_backbone_state(state)
    state = beit_state()
    del state["norm.weight"], state["norm.bias"]
    with pytest.raises(ValueError, match="final 'norm'"):
        import_backbone_state(state)


def test_init_from_a_beit_v2_release(tmp_path):
    overrides = [
        *TINY,
        "trainer.fast_dev_run=true",
        "backbone.rel_pos_bias=true",
        "backbone.layerscale_init=0.1",
    ]
    cfg = compose_train_cfg(tmp_path, overrides)
    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))
    own = model.student["backbone"]
    side = own.patch_embed.grid_size[0]
    state = beit_state(d=own.embed_dim, depth=len(own.blocks), side=side, v2=True)
    state["patch_embed.proj.weight"] = torch.randn(own.embed_dim, 3, own.patch_size, own.patch_size) * 0.2
    path = tmp_path / "beitv2_pretrain.pth"
    torch.save({"model": state}, path)
    init_backbones(model, str(path))
    x = torch.randn(2, 3, *own.patch_embed.img_size)
    with torch.no_grad():
        for network in (model.student, model.teacher):
            assert max_diff(network["backbone"].eval()(x), beit_reference(state, x)) < 1e-5


def test_our_checkpoints_pick_the_ema_teacher_else_the_student():
    student, teacher = random_timm_vit(5).state_dict(), random_timm_vit(6).state_dict()
    tokenizer = random_timm_vit(7, embed_dim=48, num_heads=2).state_dict()

    def lightning(**networks):
        return {"state_dict": {f"{n}.{k}": v for n, s in networks.items() for k, v in s.items()}}

    ema = import_backbone_state(lightning(**{"student.backbone": student, "teacher.backbone": teacher}))
    assert ema.prefix == "state_dict.teacher.backbone."
    assert torch.equal(ema.state["cls_token"], teacher["cls_token"])
    # BEiT v2: the teacher is a frozen ViT tokenizer; VQ-KD: a frozen feature teacher. Neither is
    # the trained network, so the student backbone is evaluated.
    for frozen in ({"teacher.tokenizer.backbone": tokenizer}, {"teacher.backbone.model": tokenizer}):
        picked = import_backbone_state(lightning(**{"student.backbone": student, **frozen}))
        assert picked.prefix == "state_dict.student.backbone."
        assert torch.equal(picked.state["cls_token"], student["cls_token"])


def test_our_relative_position_bias_backbone_round_trips():
    torch.manual_seed(8)
    ours = MaskedViT(**ARCH, rel_pos_bias=True).eval()
    with torch.no_grad():
        ours.rel_pos_bias.table.normal_()  # a bias that changes the output
    imported = import_backbone_state(
        {"state_dict": {f"teacher.backbone.{k}": v for k, v in ours.state_dict().items()}}
    )
    assert imported.layout == "sslvit" and imported.arch["rel_pos_bias"] is True
    rebuilt = build(imported)
    x = images()
    with torch.no_grad():
        assert max_diff(rebuilt(x), ours(x)) < 1e-6
