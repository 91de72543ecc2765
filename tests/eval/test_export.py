"""eval=export: the teacher backbone reloads in timm from .pth and .safetensors with identical outputs."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from toys import build_vit

from sslvit.backbones import MaskedViT
from sslvit.eval.checkpoint_import import import_backbone_state, load_any_checkpoint
from sslvit.eval.export import export_timm, timm_reload_max_abs_diff, timm_spec


def random_backbone() -> MaskedViT:
    """Registers and LayerScale on, every weight random (gammas far from their init value)."""
    torch.manual_seed(0)
    vit = MaskedViT(
        img_size=(16, 24), patch_size=4, embed_dim=32, depth=2, num_heads=2, num_register_tokens=2,
        layerscale_init=0.1,
    )  # fmt: skip
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit.eval()


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_export_reloads_in_timm_with_the_same_features(tmp_path, fmt):
    backbone = random_backbone()
    files = export_timm(backbone, tmp_path)
    spec = json.loads((tmp_path / "backbone_timm.json").read_text())
    assert spec == {"arch": files["arch"], "kwargs": files["kwargs"]}
    reloaded = timm.create_model(spec["arch"], pretrained=False, checkpoint_path=files[fmt], **spec["kwargs"])
    reloaded.eval()
    x = torch.randn(3, 3, 16, 24)
    with torch.no_grad():
        assert (backbone(x) - reloaded(x)).abs().max() < 1e-5
        # LayerScale gammas and registers came from the file, not from timm's init.
        torch.testing.assert_close(reloaded.blocks[1].ls2.gamma, backbone.blocks[1].ls2.gamma)
        torch.testing.assert_close(reloaded.reg_token, backbone.reg_token)
    diffs = timm_reload_max_abs_diff(backbone, files[fmt], x)
    assert diffs["cls"] < 1e-5 and diffs["tokens"] < 1e-5


def test_exported_file_imports_back_unchanged(tmp_path):
    backbone = random_backbone()
    files = export_timm(backbone, tmp_path)
    imported = import_backbone_state(load_any_checkpoint(files["safetensors"]))
    # timm names; with registers it cannot be a DINO release, so it reads as our own layout.
    assert imported.layout == "sslvit" and "mask_token" not in imported.state
    # A 4 x 6 grid: registers found, but the sides of a non-square grid cannot be read off the weights.
    assert imported.arch["num_register_tokens"] == 2 and imported.arch["img_size"] is None
    assert imported.arch["layerscale_init"] is not None and imported.arch["depth"] == 2
    for key, value in imported.state.items():
        assert torch.equal(value, backbone.state_dict()[key]), key


def test_spec_names_the_matching_timm_arch():
    arch, kwargs = timm_spec(build_vit("small", patch_size=14, img_size=56, num_register_tokens=4))
    assert arch == "vit_small_patch16_224"
    assert (kwargs["patch_size"], kwargs["img_size"], kwargs["reg_tokens"]) == (14, [56, 56], 4)
    assert kwargs["init_values"] is None and kwargs["num_classes"] == 0


def test_relative_position_bias_backbones_are_refused():
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, rel_pos_bias=True)
    with pytest.raises(ValueError, match="relative position bias"):
        timm_spec(backbone)
