"""conf/callbacks/*.yaml compose, instantiate, and write last.ckpt in a real (tiny) fit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from sslvit.callbacks import (
    AtomicModelCheckpoint,
    FiniteLossGuard,
    HealthMonitor,
    KNNEvaluation,
    LinearProbe,
    SigtermCheckpoint,
    StepSeeder,
)

CONF = Path(__file__).resolve().parents[2] / "conf"
# conf/callbacks/checkpoint.yaml, which every config but `none` includes
CHECKPOINTING = {
    "checkpoint": AtomicModelCheckpoint,
    "sigterm": SigtermCheckpoint,
    "finite_loss": FiniteLossGuard,
    "step_seed": StepSeeder,
}


def _callbacks(choice: str, tmp_path: Path) -> dict[str, Any]:
    overrides = [f"+callbacks={choice}"]
    if choice != "none":
        overrides.append(f"callbacks.checkpoint.dirpath={tmp_path / 'checkpoints'}")
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(config_name=None, overrides=overrides)
    return {name: instantiate(node) for name, node in cfg.callbacks.items()}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (
            "default",
            {
                **CHECKPOINTING,
                "knn": KNNEvaluation,
                "linear_probe": LinearProbe,
                "health": HealthMonitor,
            },
        ),
        ("knn", {**CHECKPOINTING, "knn": KNNEvaluation}),
        ("linear_probe", {**CHECKPOINTING, "linear_probe": LinearProbe}),
        ("checkpoint", CHECKPOINTING),
        ("none", {}),
    ],
)
def test_configs_instantiate(tmp_path: Path, choice: str, expected: dict[str, type]) -> None:
    callbacks = _callbacks(choice, tmp_path)
    assert {name: type(cb) for name, cb in callbacks.items()} == expected
    if "knn" in callbacks:
        assert callbacks["knn"].ks == (10, 20, 100, 200) and callbacks["knn"].primary_k == 20


def test_default_callbacks_in_a_fit_write_last_ckpt(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    callbacks = _callbacks("default", tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks.values()),
        default_root_dir=tmp_path,
    )
    trainer.fit(make_module(), datamodule=make_datamodule(val_flip=8))
    assert float(trainer.callback_metrics["val/knn_top1"]) == pytest.approx(75.0)
    assert float(trainer.callback_metrics["val/linear_top1"]) >= 50.0  # 8 steps; >= 75 once converged
    files = sorted(os.listdir(tmp_path / "checkpoints"))
    assert files == ["epoch001-step0000008.ckpt", "last.ckpt"]  # latest epoch only + last
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["epoch"] == 1
    probe_state = next(v for k, v in state["callbacks"].items() if k.startswith("LinearProbe"))
    assert probe_state["probe"]["weight"].shape == (4, 8)
