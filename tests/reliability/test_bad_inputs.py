"""The bad-input matrix, the cases not already covered elsewhere (see the list below), in-process.

Covered elsewhere: missing folder (tests/data/test_image_folder.py + tests/test_cli.py), empty folder,
zero-byte files skipped, truncated JPEG and text-named-.jpg (tests/data/test_image_io.py and
test_image_folder.py), CMYK / RGBA / LA / 16-bit / palette images (tests/data/test_image_io.py), unknown
config key (tests/test_train.py), init_from with a synthetic wrong-shape state dict (tests/test_train.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from PIL import Image
from toys import CONF_DIR, TINY, compose_train_cfg, tiny_dino

from sslvit.backbones import MaskedViT
from sslvit.data import ImageFolderDataset, MultiCropTransform
from sslvit.data.image_io import UnreadableImageError, load_rgb
from sslvit.train import init_backbones, train
from sslvit.utils.config_check import ConfigTypeError


def _truncated_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


# -------------------------------------------------------------------------------------- images
def test_one_pixel_image_gives_full_size_crops(tmp_path):
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tmp_path / "dot.png")
    image = load_rgb(tmp_path / "dot.png")
    assert image.size == (1, 1)
    transform = MultiCropTransform(global_crop_size=32, local_crop_size=16, num_local_crops=2)
    global_crops, local_crops = transform(image)
    assert [tuple(c.shape) for c in global_crops] == [(3, 32, 32)] * 2
    assert [tuple(c.shape) for c in local_crops] == [(3, 16, 16)] * 2


def test_huge_image_is_refused_before_decoding(tmp_path):
    """Policy: more than Pillow's MAX_IMAGE_PIXELS (89.5 MP) is unreadable, not decoded (a 10000 x
    10000 RGB image would take 300 MB per loader worker). The test file is 1-bit, 12 MB in memory."""
    Image.new("1", (10_000, 10_000)).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    with pytest.raises(UnreadableImageError, match=r"huge\.png.*DecompressionBomb"):
        load_rgb(tmp_path / "huge.png")
    # skipped (None) by default, fatal with on_bad_image=fail
    assert ImageFolderDataset(tmp_path, labelled=False)[0] is None
    with pytest.raises(UnreadableImageError, match=r"huge\.png.*on_bad_image=skip"):
        ImageFolderDataset(tmp_path, labelled=False, on_bad_image="fail")[0]


def test_bomb_limit_follows_pillows_setting(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 400 pixels > 100: a "bomb" now
    with pytest.raises(UnreadableImageError, match="DecompressionBomb"):
        load_rgb(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert load_rgb(tmp_path / "a.png").size == (20, 20)


def test_on_bad_image_fail_names_the_file(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"empty\.jpg: empty file"):
        ImageFolderDataset(tmp_path, labelled=False, on_bad_image="fail")
    (tmp_path / "empty.jpg").unlink()
    _truncated_jpeg(tmp_path / "cut.jpg")
    dataset = ImageFolderDataset(tmp_path, labelled=False, on_bad_image="fail")
    assert dataset[1][0].size == (8, 8)  # sorted: cut.jpg, ok.png
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg.*data\.on_bad_image=skip"):
        dataset[0]
    with pytest.raises(ValueError, match="on_bad_image must be 'skip' or 'fail', got 'ignore'"):
        ImageFolderDataset(tmp_path, labelled=False, on_bad_image="ignore")


def test_folder_config_policy_key_reaches_every_dataset(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    cfg = compose_train_cfg(
        tmp_path,
        ["data=folder", f"data.root={tmp_path}", f"data.val_root={tmp_path}", "data.on_bad_image=fail"],
    )
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    assert datamodule.on_bad_image == "fail"
    sets = (datamodule.train_set, datamodule.eval_sets["train"], datamodule.eval_sets["val"])
    assert {d.on_bad_image for d in sets} == {"fail"}


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("override", "group"), [("method=nope", "method"), ("backbone=vit_huge", "backbone")]
)
def test_unknown_option_names_the_group(override, group):
    with (
        initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"),
        pytest.raises(ConfigCompositionException, match=rf"Could not find '{group}/") as err,
    ):
        compose(config_name="config", overrides=[override])
    assert "Available options" in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=abc", "data.batch_size='abc': sslvit.data.SSLDataModule expects int, got str"),
        ("data.batch_size=8.5", "data.batch_size=8.5: sslvit.data.SSLDataModule expects int, got float"),
        ("trainer.max_epochs=ten", "trainer.max_epochs='ten': lightning.Trainer expects int | None, got str"),
        (
            "method.optim.base_lr=fast",
            "method.optim.base_lr='fast': sslvit.methods.OptimConfig expects float",
        ),
        ("data.transform.global_crop_scale=[0.4,x]", "expects Sequence[float], got list"),
    ],
)
def test_wrong_typed_override_is_one_line_naming_the_key(tmp_path, override, message):
    cfg = compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true", override])
    with pytest.raises(ConfigTypeError) as err:
        train(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing was built or run


def test_well_typed_overrides_pass_the_check(tmp_path):
    from sslvit.utils.config_check import check_config_types

    for override in ("data.batch_size=16", "method.optim.base_lr=1", "trainer.precision=bf16-mixed"):
        check_config_types(compose_train_cfg(tmp_path, [*TINY, override]))


def test_init_from_checkpoint_of_another_architecture(tmp_path):
    """A real checkpoint of a wider ViT (embed_dim 64 vs 32): the message names key and both shapes."""
    other = MaskedViT(img_size=16, patch_size=4, embed_dim=64, depth=2, num_heads=2)
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {f"teacher.backbone.{k}": v for k, v in other.state_dict().items()}}, path)
    model = tiny_dino()
    before = model.student["backbone"].cls_token.detach().clone()
    with pytest.raises(ValueError, match=r"init_from=.*other\.ckpt does not fit this backbone") as err:
        init_backbones(model, str(path))
    assert "64" in str(err.value) and "32" in str(err.value)  # both widths, checkpoint vs model
    assert torch.equal(model.student["backbone"].cls_token, before)  # nothing half-loaded


# ------------------------------------------------------------------------------------- network
def test_training_reaches_no_network(tmp_path, monkeypatch):
    """Every socket connection outside this machine fails; a full fast_dev_run (training, k-NN, probe,
    checkpoint, CSV logs) still completes."""
    attempts = []
    real_connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith(("127.", "/")) or host in ("localhost", "::1")):
            return real_connect(self, address)
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    summary = train(compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true"]))
    assert "val/knn_top1" in summary["metrics"]
    assert attempts == []
