"""The offline evaluation task: ``python eval.py eval=<knn|linear|finetune|export> checkpoint=<file>``.

The backbone is the EMA teacher's (the student's when the teacher is a frozen network) of one of our
checkpoints, rebuilt from the run config stored in it under ``sslvit_config`` (only from sslvit's own
backbone and data classes: a stored config is data, see :mod:`sslvit.utils.safe_config`); or a released DINO,
iBOT or DINOv2 backbone (:mod:`sslvit.eval.checkpoint_import`), built from what its weights say, with a
dataset chosen on the command line (``data=fashion_mnist``). Each evaluation writes
``eval_summary.json`` (and its own files) into the Hydra output folder.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader

from sslvit.backbones import MaskedViT
from sslvit.eval.checkpoint_import import (
    ImportedBackbone,
    complete_for,
    import_backbone_state,
    load_any_checkpoint,
)
from sslvit.eval.export import export_timm, timm_reload_max_abs_diff
from sslvit.eval.features import extract_backbone_features, feature_slices, select
from sslvit.eval.finetune import finetune
from sslvit.eval.knn import knn_accuracy
from sslvit.eval.linear import format_grid, train_linear_grid
from sslvit.train import output_dir_of
from sslvit.utils.atomic_write import atomic_write_json
from sslvit.utils.checkpoint import load_backbone_weights
from sslvit.utils.checkpoint_reader import RUN_CONFIG_KEY
from sslvit.utils.matmul_precision import set_float32_matmul_precision
from sslvit.utils.safe_config import instantiate_stored

log = logging.getLogger(__name__)
EVALS = ("knn", "linear", "finetune", "export")


def load_backbone(
    checkpoint_path: str, overrides: dict[str, Any] | None = None
) -> tuple[MaskedViT, dict[str, Any] | None, ImportedBackbone]:
    """Build the evaluation backbone of a checkpoint and load its weights.

    Args:
        checkpoint_path: one of our Lightning checkpoints, an ``eval=export`` file, or a DINO / iBOT /
            DINOv2 release.
        overrides: backbone keyword arguments that win over the stored / inferred ones (e.g.
            ``num_heads`` for a release whose head count is not 64 wide, ``drop_path_rate``).

    Returns:
        The backbone (eval mode), the stored run config (None for foreign checkpoints) and the import
        record (layout, key prefix).
    """
    source = f"checkpoint={checkpoint_path}"
    checkpoint = load_any_checkpoint(checkpoint_path, source)
    imported = import_backbone_state(checkpoint)
    run_cfg = checkpoint.get(RUN_CONFIG_KEY)
    if run_cfg is not None:
        where = f"{RUN_CONFIG_KEY}.backbone"
        backbone = instantiate_stored(run_cfg["backbone"], source, where, overrides)
    else:
        arch = {**imported.arch, **(overrides or {})}
        if arch["img_size"] is None:
            raise ValueError(
                f"checkpoint {checkpoint_path}: its position embedding is not a square grid; "
                "give the training size with +backbone.img_size=[H,W]"
            )
        backbone = MaskedViT(**arch)
    state = complete_for(backbone, imported)
    load_backbone_weights(backbone, state, source=f"checkpoint={checkpoint_path}")
    log.info("backbone: %s layout under %r (%d tensors)", imported.layout, imported.prefix, len(state))
    return backbone.eval(), run_cfg, imported


def build_datamodule(cfg: DictConfig, run_cfg: dict[str, Any] | None) -> Any:
    """The checkpoint's data config with ``cfg.data`` merged over it (a full data group for releases)."""
    overrides: Any = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
    base = (run_cfg or {}).get("data") or {}
    if "_target_" not in base and "_target_" not in overrides:
        raise ValueError(
            f"checkpoint {cfg.checkpoint} carries no data config; choose a dataset: data=fashion_mnist"
        )
    # The stored part is checked against the allow-list; the command line's overrides are the user's own.
    where = f"{RUN_CONFIG_KEY}.data"
    datamodule = instantiate_stored(base, f"checkpoint={cfg.checkpoint}", where, overrides)
    if not datamodule.has_labels:
        raise ValueError(f"eval={cfg.eval.name} needs labelled data.eval_train_set and data.eval_val_set")
    return datamodule


def run_knn(
    backbone: nn.Module, datamodule: Any, ks: list[int], temperature: float, device: str
) -> dict[str, Any]:
    """Weighted k-NN (DINO protocol) on the last block's normalised CLS features."""
    train_x, train_y = extract_backbone_features(backbone, datamodule.eval_dataloader("train"), 1, device)
    val_x, val_y = extract_backbone_features(backbone, datamodule.eval_dataloader("val"), 1, device)
    cls = feature_slices(train_x.shape[1] // 2, 1, 1, avgpool=False)
    accuracy = knn_accuracy(
        select(train_x, cls), train_y, select(val_x, cls), val_y, datamodule.num_classes, ks, temperature
    )
    return {"metrics": {f"knn_top1_k{k}": acc for k, acc in accuracy.items()}}


def run_linear(backbone: nn.Module, datamodule: Any, ecfg: Any, device: str, seed: int) -> dict[str, Any]:
    """The linear grid of :mod:`sslvit.eval.linear` on features extracted once."""
    depth = len(backbone.blocks)  # type: ignore[arg-type]
    stored = min(max(int(b) for b in ecfg.blocks), depth)
    train_x, train_y = extract_backbone_features(
        backbone, datamodule.eval_dataloader("train"), stored, device
    )
    test_x, test_y = extract_backbone_features(backbone, datamodule.eval_dataloader("val"), stored, device)
    result = train_linear_grid(
        train_x, train_y, test_x, test_y, datamodule.num_classes, int(backbone.embed_dim),  # type: ignore[arg-type]
        stored, lrs=list(ecfg.lrs), blocks=list(ecfg.blocks), pools=list(ecfg.pools), epochs=ecfg.epochs,
        batch_size=ecfg.batch_size, momentum=ecfg.momentum, weight_decay=ecfg.weight_decay,
        val_fraction=ecfg.val_fraction, seed=seed, device=device,
    )  # fmt: skip
    print(format_grid(result))
    best = result["best"]
    metrics = {"linear_best_val_top1": best["val_top1"], "linear_best_test_top1": best["test_top1"]}
    return {"metrics": metrics, "best": best, "grid": result, "grid_file": "linear_grid.json"}


def run_finetune(backbone: nn.Module, datamodule: Any, ecfg: Any, device: str) -> dict[str, Any]:
    """Layer-decayed fine-tuning on the evaluation train subset, tested on the val subset."""
    train_eval = datamodule.eval_dataloader("train")
    train_loader = DataLoader(
        train_eval.dataset,
        batch_size=ecfg.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=train_eval.collate_fn,
        num_workers=datamodule.num_workers,
    )
    result = finetune(
        backbone, train_loader, datamodule.eval_dataloader("val"), datamodule.num_classes,
        epochs=ecfg.epochs, lr=ecfg.lr, min_lr=ecfg.min_lr, warmup_epochs=ecfg.warmup_epochs,
        layer_decay=ecfg.layer_decay, weight_decay=ecfg.weight_decay, clip_grad=ecfg.clip_grad, device=device,
    )  # fmt: skip
    metrics = {k: result[k] for k in ("test_top1", "test_top1_before")}
    return {"metrics": {f"finetune_{k}": v for k, v in metrics.items()}, "details": result}


def run_export(backbone: nn.Module, datamodule: Any | None, output_dir: Any, ecfg: Any) -> dict[str, Any]:
    """Write the timm files and check that timm reloads them to the same features."""
    files = export_timm(backbone.cpu(), output_dir, stem=ecfg.stem)
    if datamodule is not None:
        images = next(iter(datamodule.eval_dataloader("val")))[0][: ecfg.check_images]
    else:  # a release evaluated without data: seeded noise at the native size
        patch_embed: Any = backbone.patch_embed
        height, width = patch_embed.img_size
        images = torch.randn(ecfg.check_images, 3, height, width, generator=torch.Generator().manual_seed(0))
    diffs = {fmt: timm_reload_max_abs_diff(backbone, files[fmt], images) for fmt in ("pth", "safetensors")}
    kwargs = ", ".join(f"{k}={v!r}" for k, v in files["kwargs"].items())
    checkpoint = f"checkpoint_path={files['safetensors']!r}"
    print(f"timm arch: {files['arch']}")
    print(f"timm.create_model({files['arch']!r}, pretrained=False, {checkpoint}, {kwargs})")
    metrics = {f"export_max_abs_diff_{fmt}_{part}": d[part] for fmt, d in diffs.items() for part in d}
    return {"metrics": metrics, "files": files}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.eval`` on ``cfg.checkpoint``; write and return ``eval_summary.json``."""
    start = time.time()
    name = cfg.eval.name if isinstance(cfg.eval, DictConfig) else None
    if name not in EVALS:
        raise ValueError(f"unknown eval={name or cfg.eval!r}; available: {', '.join(EVALS)}")
    ecfg = cfg.eval
    torch.manual_seed(int(cfg.get("seed") or 0))
    set_float32_matmul_precision(cfg.get("float32_matmul_precision"))
    overrides = OmegaConf.to_container(cfg.backbone, resolve=True) if cfg.get("backbone") else {}
    backbone, run_cfg, imported = load_backbone(cfg.checkpoint, overrides)  # type: ignore[arg-type]
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    output_dir = output_dir_of(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    if name == "export":
        has_data = run_cfg is not None or "_target_" in (cfg.get("data") or {})
        result = run_export(backbone, build_datamodule(cfg, run_cfg) if has_data else None, output_dir, ecfg)
    else:
        datamodule = build_datamodule(cfg, run_cfg)
        backbone.to(device)
        if name == "knn":
            result = run_knn(backbone, datamodule, list(ecfg.ks), float(ecfg.temperature), device)
        elif name == "linear":
            result = run_linear(backbone, datamodule, ecfg, device, int(cfg.get("seed") or 0))
        else:
            result = run_finetune(backbone, datamodule, ecfg, device)
    if "grid" in result:
        atomic_write_json(result.pop("grid"), output_dir / result["grid_file"])
    summary = {
        "eval": name,
        "checkpoint": str(cfg.checkpoint),
        "layout": imported.layout,
        **result,
        "config": OmegaConf.to_container(ecfg, resolve=True),
        "output_dir": str(output_dir),
        "wall_time_s": round(time.time() - start, 2),
    }
    atomic_write_json(summary, output_dir / "eval_summary.json")
    print(json.dumps(summary["metrics"], indent=2))
    print(f"output dir: {output_dir}")
    return summary
