"""The offline evaluation task: rebuild a trained model from its checkpoint and evaluate its features."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sslvit.callbacks.features import extract_features
from sslvit.eval.knn import knn_accuracy
from sslvit.train import output_dir_of, write_json_atomic
from sslvit.utils.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def load_trained_module(checkpoint_path: str) -> tuple[Any, DictConfig]:
    """Rebuild the method (backbone, heads, teacher) from the config stored in one of our checkpoints."""
    checkpoint = load_checkpoint(checkpoint_path)
    if "sslvit_config" not in checkpoint:
        raise ValueError(
            f"checkpoint {checkpoint_path} was not written by sslvit's train.py (no sslvit_config)"
        )
    run_cfg = OmegaConf.create(checkpoint["sslvit_config"])
    model = instantiate(run_cfg.method, backbone=instantiate(run_cfg.backbone))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), run_cfg


def run_knn(model: Any, datamodule: Any, ks: list[int], temperature: float) -> dict[str, float]:
    """Weighted k-NN (DINO protocol) on teacher CLS features of the datamodule's evaluation splits."""
    if not datamodule.has_labels:
        raise ValueError("eval=knn needs a labelled dataset (data.eval_train_set / data.eval_val_set)")
    train_x, train_y = extract_features(model, datamodule.eval_dataloader("train"))
    val_x, val_y = extract_features(model, datamodule.eval_dataloader("val"))
    accuracy = knn_accuracy(train_x, train_y, val_x, val_y, datamodule.num_classes, ks, temperature)
    return {f"knn_top1_k{k}": acc for k, acc in accuracy.items()}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.eval`` on ``cfg.checkpoint``; write and return ``eval_summary.json``."""
    start = time.time()
    if cfg.eval != "knn":
        raise ValueError(f"unknown eval={cfg.eval!r}; available: knn")
    model, run_cfg = load_trained_module(cfg.checkpoint)
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    model.to("cpu" if device == "auto" else device)
    data_cfg = OmegaConf.merge(run_cfg.data, cfg.get("data") or {})
    datamodule = instantiate(data_cfg)
    metrics = run_knn(model, datamodule, list(cfg.ks), cfg.temperature)
    output_dir = output_dir_of(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "eval": cfg.eval,
        "checkpoint": str(cfg.checkpoint),
        "metrics": metrics,
        "output_dir": str(output_dir),
        "wall_time_s": round(time.time() - start, 2),
    }
    write_json_atomic(summary, output_dir / "eval_summary.json")
    print(json.dumps(metrics, indent=2))
    print(f"output dir: {output_dir}")
    return summary
