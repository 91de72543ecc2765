"""eval.py's task on a tiny trained checkpoint: knn, linear (through the real CLI), finetune, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from toys import CONF_DIR, TINY, compose_train_cfg

from sslvit.config import register_resolvers
from sslvit.evaluate import evaluate
from sslvit.train import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    overrides = [*TINY, "callbacks=knn", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    return train(compose_train_cfg(tmp_path_factory.mktemp("run"), overrides))


def compose_eval_cfg(output_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose conf/eval.yaml as `python eval.py <overrides>` would, with its output in ``output_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=["device=cpu", *overrides], return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_offline_knn_matches_training_time_knn(trained, tmp_path):
    last = trained["checkpoints"]["last"]
    result = evaluate(compose_eval_cfg(tmp_path, ["eval=knn", f"checkpoint={last}", "eval.ks=[10,20]"]))
    assert result["layout"] == "sslvit"
    metrics = result["metrics"]
    assert metrics["knn_top1_k20"] == pytest.approx(trained["metrics"]["val/knn_top1"], abs=1e-6)
    # The raw-pixel floor: the same subsets and k-NN as the training-time callback's.
    for name in ("pixels", "pixels_centered"):
        assert metrics[f"knn_top1_{name}_k20"] == pytest.approx(trained["metrics"][f"val/knn_top1_{name}"])
    assert set(metrics) == {
        f"knn_top1{form}_k{k}" for form in ("", "_pixels", "_pixels_centered") for k in (10, 20)
    }
    assert (tmp_path / "eval_summary.json").is_file()


def test_eval_linear_cli_writes_the_grid(trained, tmp_path):
    proc = subprocess.run(
        [
            sys.executable, "eval.py", "eval=linear", f"checkpoint={trained['checkpoints']['last']}",
            "device=cpu", "eval.epochs=2", "eval.lrs=[0.001,0.1]", f"hydra.run.dir={tmp_path}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ENV,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    grid = json.loads((tmp_path / "linear_grid.json").read_text())
    # vit_test has 2 blocks, so "last 4" is clipped to 2: 2 lrs x {1, 2} blocks x 2 pools.
    assert len(grid["grid"]) == 8 and {row["blocks"] for row in grid["grid"]} == {1, 2}
    assert summary["best"] == grid["best"]
    assert summary["best"]["val_top1"] == max(row["val_top1"] for row in grid["grid"])
    assert summary["metrics"]["linear_best_test_top1"] == summary["best"]["test_top1"]
    assert grid["num_fit"] + grid["num_heldout"] == 128  # data=fake's eval_train_samples
    assert proc.stdout.count(" *") == 1 and "linear_best_test_top1" in proc.stdout


def test_eval_export_reloads_in_timm(trained, tmp_path):
    result = evaluate(
        compose_eval_cfg(tmp_path, ["eval=export", f"checkpoint={trained['checkpoints']['last']}"])
    )
    assert all(value < 1e-5 for value in result["metrics"].values()), result["metrics"]
    assert len(result["metrics"]) == 4  # pth / safetensors x cls / tokens
    spec = json.loads((tmp_path / "backbone_timm.json").read_text())
    model = timm.create_model(
        spec["arch"], pretrained=False, checkpoint_path=str(tmp_path / "backbone.pth"), **spec["kwargs"]
    )
    teacher = torch.load(trained["checkpoints"]["last"], weights_only=True)["state_dict"]
    torch.testing.assert_close(model.pos_embed, teacher["teacher.backbone.pos_embed"], rtol=0, atol=0)


def test_eval_finetune_runs_and_reports(trained, tmp_path):
    overrides = ["eval=finetune", f"checkpoint={trained['checkpoints']['last']}", "eval.epochs=1"]
    result = evaluate(compose_eval_cfg(tmp_path, overrides))
    assert result["details"]["steps"] == 2  # 128 eval-train images / batch 64
    assert 0.0 <= result["metrics"]["finetune_test_top1"] <= 100.0


def test_release_checkpoint_needs_a_dataset_then_evaluates(tmp_path):
    release = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8, embed_dim=64,
        depth=2, num_heads=1,
    )  # fmt: skip
    path = tmp_path / "dino_release.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in release.state_dict().items()}}, path)
    with pytest.raises(ValueError, match="data=fashion_mnist"):
        evaluate(compose_eval_cfg(tmp_path / "a", ["eval=knn", f"checkpoint={path}"]))
    result = evaluate(compose_eval_cfg(tmp_path / "b", ["eval=knn", f"checkpoint={path}", "data=fake"]))
    assert result["layout"] == "dino" and {f"knn_top1_k{k}" for k in (10, 20, 100, 200)} <= set(
        result["metrics"]
    )


def test_unknown_eval_is_a_clear_error(tmp_path):
    cfg = OmegaConf.create(
        {"eval": {"name": "nope"}, "checkpoint": str(tmp_path / "x.ckpt"), "device": "cpu"}
    )
    with pytest.raises(ValueError, match="unknown eval='nope'"):
        evaluate(cfg)
