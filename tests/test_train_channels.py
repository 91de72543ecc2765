"""Grey and multi-band images through train.py, and RGB weights in a backbone of another channel count."""

import logging
import math

import numpy as np
import pytest
import tifffile
import torch
from toys import TINY, compose_train_cfg

from sslvit.backbones import MaskedViT
from sslvit.methods import DINO, OptimConfig
from sslvit.train import init_backbones, train
from sslvit.utils.checkpoint import load_backbone_weights


def _vit(in_chans: int) -> MaskedViT:
    return MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, in_chans=in_chans)


def _tokens(backbone: MaskedViT, images: torch.Tensor) -> torch.Tensor:
    out = backbone.eval().forward_features(images)
    return torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], dim=1)


def test_init_from_rgb_weights_into_a_grey_backbone_matches_rgb_on_replicated_grey(tmp_path, caplog):
    torch.manual_seed(0)
    rgb = _vit(3)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")  # a plain backbone state dict
    optim = OptimConfig(warmup_epochs=0, batch_size_per_device=2)
    model = DINO(_vit(1), optim, out_dim=16, hidden_dim=16, bottleneck_dim=8, warmup_teacher_temp_epochs=1)
    with caplog.at_level(logging.INFO):
        init_backbones(model, str(tmp_path / "rgb.pth"))
    assert "patch embedding adapted to 1 input channels (kernel summed over its 3)" in caplog.text
    grey = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        want = _tokens(rgb, grey.expand(-1, 3, -1, -1))
        for network in (model.student, model.teacher):
            assert torch.allclose(_tokens(network["backbone"], grey), want, atol=1e-5)


def test_rgb_weights_repeat_over_six_bands_at_half_strength():
    torch.manual_seed(0)
    rgb, six = _vit(3), _vit(6)
    load_backbone_weights(six, rgb.state_dict(), source="test")
    # 6 bands = R, G, B, R, G, B at 3/6 each: an image equal in every band gives the RGB model's tokens.
    stored = rgb.patch_embed.proj.weight
    assert torch.allclose(six.patch_embed.proj.weight, torch.cat([stored, stored], dim=1) / 2)
    image = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(
            _tokens(six, image.expand(-1, 6, -1, -1)), _tokens(rgb, image.expand(-1, 3, -1, -1)), atol=1e-5
        )


def _band_folder(root, in_chans: int, bad: bool) -> int:
    """Two classes of 16-bit TIFFs and float32 .npy files with ``in_chans`` bands; a class, a level."""
    rng = np.random.default_rng(0)
    count = 0
    for label, level in (("dark", 0.25), ("light", 0.75)):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(2):
            values = np.clip(level + 0.1 * rng.standard_normal((in_chans, 40, 40)), 0, 1)
            tifffile.imwrite(
                folder / f"t{i}.tif", (values * 65535).astype(np.uint16), photometric="minisblack"
            )
            np.save(folder / f"n{i}.npy", values.transpose(1, 2, 0).astype(np.float32))  # H x W x C
            count += 2
    if bad:  # one band too few: skipped and counted, like a corrupt picture
        np.save(root / "dark" / "wrong.npy", np.zeros((40, 40, in_chans - 1), dtype=np.float32))
        count += 1
    return count


@pytest.mark.parametrize("in_chans", [1, 5])
def test_band_folders_train_end_to_end(tmp_path, in_chans):
    root = tmp_path / "images"
    files = _band_folder(root, in_chans, bad=in_chans == 5)
    overrides = [
        *(o for o in TINY if o != "data=fake"),
        "data=folder",
        f"data.root={root}",
        f"data.val_root={root}",
        f"data.in_chans={in_chans}",
        "data.transform.global_crop_size=32",
        "data.transform.local_crop_size=16",
        "data.transform.mean=[0.5]",
        "data.transform.std=[0.25]",
        f"data.batch_size={files}",  # one batch holds every file, the bad one included
        "data.num_workers=0",
        "data.persistent_workers=false",
        "data.eval_batch_size=8",
        "trainer.fast_dev_run=true",
    ]
    summary = train(compose_train_cfg(tmp_path / "run", overrides))
    metrics = summary["metrics"]
    assert math.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["val/knn_top1"] <= 100.0
    assert metrics["data/skipped_images"] == (1.0 if in_chans == 5 else 0.0)


def test_an_rgb_timm_teacher_reads_grey_images_through_a_summed_patch_embedding(tmp_path):
    import timm

    from sslvit.utils.feature_teacher_loader import load_feature_teacher

    torch.manual_seed(0)
    rgb = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    teacher = load_feature_teacher(arch="vit_tiny_patch16_224", weights=str(tmp_path / "rgb.pth"), in_chans=1)
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        want = rgb.eval().forward_features(grey.expand(-1, 3, -1, -1))
        got = teacher.model.forward_features(grey)
    assert teacher.model.patch_embed.proj.in_channels == 1
    assert torch.allclose(got, want, atol=1e-4)
