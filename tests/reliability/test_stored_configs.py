"""Configs read from files are data: a crafted ``_target_`` in a checkpoint, tokenizer or teacher file is
refused at every entry point before anything is built, and the configs we write ourselves pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from toys import CONF_DIR, TINY, compose_train_cfg, tiny_dino

from sslvit.config import register_resolvers
from sslvit.evaluate import load_backbone
from sslvit.tokenizers import DVAE, load_tokenizer
from sslvit.tokenizers.io import tokenizer_record
from sslvit.train import init_backbones, train
from sslvit.utils.feature_teacher_loader import load_feature_teacher
from sslvit.utils.safe_config import (
    BUILDABLE_TARGETS,
    TOKENIZER_TARGETS,
    UnsafeConfigError,
    check_stored_config,
    instantiate_stored,
)

WRITE_TEXT = "pathlib.Path.write_text"


def write_file_config(marker: Path) -> dict:
    """What a crafted checkpoint stores as its backbone config: ``Path(marker).write_text("pwned")``."""
    path = {"_target_": "pathlib.Path", "_args_": [str(marker)]}
    return {"_target_": WRITE_TEXT, "_args_": [path, "pwned"]}


def test_the_crafted_config_writes_a_file_when_hydra_builds_it(tmp_path):
    """The payload of these tests is real: plain ``instantiate`` writes the attacker's file."""
    marker = tmp_path / "written"
    instantiate(OmegaConf.create(write_file_config(marker)))
    assert marker.read_text() == "pwned"


@pytest.fixture
def crafted(tmp_path) -> tuple[Path, Path]:
    """A well-formed DINO checkpoint (real weights) whose stored backbone config writes a file."""
    marker, path = tmp_path / "pwned.txt", tmp_path / "crafted.ckpt"
    run_cfg = {"backbone": write_file_config(marker), "data": {"_target_": "sslvit.data.FakeDataset"}}
    torch.save({"state_dict": tiny_dino().state_dict(), "sslvit_config": run_cfg}, path)
    return path, marker


def _refused(err: pytest.ExceptionInfo, path: Path, target: str = WRITE_TEXT) -> None:
    message = str(err.value)
    assert target in message and str(path) in message and "\n" not in message, message


def test_eval_checkpoint_refuses_a_crafted_backbone_target(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeConfigError) as err:
        load_backbone(str(path))  # what `python eval.py eval=knn checkpoint=<file>` runs first
    _refused(err, path)
    assert f"checkpoint={path}" in str(err.value)
    assert not marker.exists()


def test_init_from_refuses_a_crafted_backbone_target(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeConfigError) as err:
        init_backbones(tiny_dino(), str(path))
    _refused(err, path)
    assert not marker.exists()


def test_ckpt_path_refuses_a_crafted_backbone_target_before_lightning_loads(crafted, tmp_path):
    path, marker = crafted
    cfg = compose_train_cfg(tmp_path / "run", [*TINY, "callbacks=checkpoint", f"ckpt_path={path}"])
    with pytest.raises(UnsafeConfigError) as err:
        train(cfg)
    _refused(err, path)
    assert f"ckpt_path={path}" in str(err.value)
    assert not marker.exists()


def test_teacher_path_refuses_a_crafted_backbone_target(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeConfigError) as err:
        load_feature_teacher(path=str(path))  # method=vqkd teacher.path=<file>
    _refused(err, path)
    assert f"teacher.path={path}" in str(err.value)
    assert not marker.exists()


def test_tokenizer_path_refuses_a_crafted_tokenizer_class(tmp_path):
    marker, path = tmp_path / "pwned.txt", tmp_path / "tokenizer.pt"
    record = {"target": WRITE_TEXT, "config": {"self": str(marker), "data": "pwned"}}
    torch.save({"sslvit_tokenizer": record, "state_dict": {}}, path)
    with pytest.raises(UnsafeConfigError) as err:
        load_tokenizer(path)
    _refused(err, path)
    assert not marker.exists()


def test_tokenizer_path_refuses_a_stage1_checkpoint_with_a_crafted_run_config(crafted):
    path, marker = crafted
    tokenizer = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["sslvit_tokenizer"] = tokenizer_record(tokenizer)
    checkpoint["state_dict"] = {f"tokenizer.{k}": v for k, v in tokenizer.state_dict().items()}
    torch.save(checkpoint, path)
    with pytest.raises(UnsafeConfigError) as err:
        load_tokenizer(path)
    _refused(err, path)
    assert not marker.exists()


def test_a_crafted_target_deep_in_the_data_config_is_refused(tmp_path):
    """eval= builds the stored data config too: a target nested in a transform is found."""
    marker, path = tmp_path / "pwned.txt", tmp_path / "crafted.ckpt"
    data = {"_target_": "sslvit.data.SSLDataModule", "transform": {"extra": [write_file_config(marker)]}}
    backbone = {"_target_": "sslvit.backbones.MaskedViT", "img_size": 16, "patch_size": 4}
    torch.save(
        {"state_dict": tiny_dino().state_dict(), "sslvit_config": {"backbone": backbone, "data": data}}, path
    )
    with pytest.raises(UnsafeConfigError, match=r"sslvit_config\.data\.transform\.extra\[0\]") as err:
        load_backbone(str(path))
    _refused(err, path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"_target_": "sslvit.backbones.MaskedViT", "_partial_": True}, "_partial_"),
        ({"_target_": "sslvit.backbones.MaskedViT", "_args_": [16]}, "_args_"),
        ({"_target_": "sslvit.backbones.MaskedViT", "img_size": "${oc.env:HOME}"}, "${oc.env:HOME}"),
        ({"_target_": "builtins.open", "file": "x", "mode": "w"}, "builtins.open"),
        ({"_target_": "shutil.copyfile", "src": "a", "dst": "b"}, "shutil.copyfile"),
        ({"_target_": "torch.save", "obj": 1, "f": "x.pt"}, "torch.save"),
        ({"_target_": "sslvit.utils.atomic_write.atomic_torch_save", "obj": 1, "path": "x"}, "atomic_torch"),
        ({"_target_": "sslvit.backbones.masked_vit.MaskedViT.__init__"}, "MaskedViT.__init__"),
    ],
)
def test_instantiate_stored_refuses_before_building(config, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeConfigError) as err:
        instantiate_stored(config, "checkpoint=x.ckpt", "sslvit_config.backbone")
    message = str(err.value)
    assert named in message and "checkpoint=x.ckpt" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_instantiate_stored_builds_an_allowed_class_with_overrides():
    stored = {"_target_": "sslvit.backbones.MaskedViT", "img_size": 16, "patch_size": 4, "embed_dim": 32}
    backbone = instantiate_stored(stored, "x", "backbone", {"depth": 1, "num_heads": 2})
    assert backbone.embed_dim == 32 and len(backbone.blocks) == 1


def test_allowed_targets_all_exist():
    from hydra._internal.utils import _locate

    for target in sorted(BUILDABLE_TARGETS | TOKENIZER_TARGETS):
        assert callable(_locate(target)), target


_EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
_METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))
# Values the user must give (data roots, the stage-1 tokenizer): any path will do for composing.
_REQUIRED = ["++data.root=/data", "++tokenizer.path=/stage1/tokenizer.pt"]


def test_every_config_we_store_passes_the_check():
    """The backbone and data configs our own runs store (resolved, as RunConfigRecorder writes them)
    build only allowed classes: a run of any recipe, method or data set stays evaluable."""
    runs = [[f"experiment={name}"] for name in _EXPERIMENTS]
    runs += [[f"method={method}", "data=fake"] for method in _METHODS]
    runs += [["method=ibot", "data=folder"]]  # imagenet and fashion_mnist: in the recipes
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for overrides in runs:
            cfg = compose(config_name="config", overrides=[*overrides, *_REQUIRED])
            stored = OmegaConf.to_container(cfg, resolve=True)
            assert isinstance(stored, dict)
            for part in ("backbone", "data"):
                check_stored_config(stored.get(part), ",".join(overrides), part)
