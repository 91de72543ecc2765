"""The training task: compose objects from the Hydra config, fit, write summary.json."""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from sslvit.callbacks.progress import default_progress_bar
from sslvit.callbacks.run_config import RunConfigRecorder
from sslvit.callbacks.schedule_report import ScheduleReport
from sslvit.eval.checkpoint_import import complete_for, import_backbone_state, load_any_checkpoint
from sslvit.utils.atomic_write import atomic_write_json
from sslvit.utils.checkpoint import load_backbone_weights
from sslvit.utils.config_check import check_config_types, check_config_values
from sslvit.utils.config_errors import building, reading_files
from sslvit.utils.matmul_precision import set_float32_matmul_precision
from sslvit.utils.resume import check_resume_checkpoint, resolve_ckpt_path
from sslvit.utils.trainer_check import check_trainer

log = logging.getLogger(__name__)


def quiet_known_warnings() -> None:
    """Silence two messages that are expected here, by message only (everything else still shows)."""
    # Lightning 2.6.6 on torch 2.14 warns about torch.utils._pytree.LeafSpec on every fit; harmless.
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # The EMA teacher is kept in eval mode on purpose (no dropout / drop path in the teacher).
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # Under Hydra the root logger already prints to the console and train.log; Lightning's own console
    # handler would print every message twice.
    if HydraConfig.initialized():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lightning_log = logging.getLogger(name)
            for handler in list(lightning_log.handlers):
                if isinstance(handler, logging.StreamHandler):
                    lightning_log.removeHandler(handler)


def output_dir_of(cfg: DictConfig) -> Path:
    """The run's output folder: Hydra's when running under Hydra, else ``cfg.output_dir`` or the cwd."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_dir") or os.getcwd())


def init_backbones(model: Any, path: str) -> None:
    """``init_from=<file>``: student and teacher backbones from a checkpoint; heads and optimizer fresh.

    Accepts our checkpoints, plain backbone state dicts and DINO / iBOT / DINOv2 / BEiT (v2) releases
    (:mod:`sslvit.eval.checkpoint_import`); a source without a mask token keeps the backbone's own.
    """
    source = f"init_from={path}"
    checkpoint = load_any_checkpoint(path, source)
    try:
        imported = import_backbone_state(checkpoint)
    except ValueError as err:
        raise ValueError(f"{source} does not fit this backbone: {err}") from err
    # The EMA teacher of DINO / iBOT / DINOv2 starts as a copy of the student; other methods have none.
    for network in (model.student, getattr(model, "teacher", None)):
        if network is not None:
            backbone = network["backbone"]
            load_backbone_weights(backbone, complete_for(backbone, imported), source=source)
    log.info("initialised student and teacher backbones from %s (%s layout)", path, imported.layout)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        if isinstance(value, int | float):
            out[key] = float(value)
    return dict(sorted(out.items()))


def knn_line(metrics: dict[str, float]) -> str | None:
    """``k-NN top-1: 72.40 (init 65.90, raw pixels 80.80)``: the learned k-NN beside its references."""
    if "val/knn_top1" not in metrics:
        return None
    references = [
        f"{name} {metrics[key]:.2f}"
        for name, key in (("init", "val/knn_top1_init"), ("raw pixels", "val/knn_top1_pixels"))
        if key in metrics
    ]
    return f"k-NN top-1: {metrics['val/knn_top1']:.2f}" + (
        f" ({', '.join(references)})" if references else ""
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job described by ``cfg``; return the summary also written to summary.json."""
    start = time.time()
    quiet_known_warnings()
    check_config_types(cfg)  # `data.batch_size=abc` -> one line naming the key, before anything is built
    check_config_values(cfg)  # `method.student_temp=0` -> the same, rather than a ZeroDivisionError later
    output_dir = output_dir_of(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    set_float32_matmul_precision(cfg.get("float32_matmul_precision"))

    datamodule = building("data", cfg.data, lambda: instantiate(cfg.data))
    # `backbone: null` for methods without a ViT (a tokenizer's own training, e.g. method=dvae).
    method_kwargs = {}
    if cfg.get("backbone") is not None:
        method_kwargs["backbone"] = building("backbone", cfg.backbone, lambda: instantiate(cfg.backbone))
    model = building("method", cfg.method, lambda: instantiate(cfg.method, **method_kwargs))
    if cfg.get("init_from"):
        with reading_files():
            init_backbones(model, cfg.init_from)

    callbacks = [
        building(f"callbacks.{name}", node, functools.partial(instantiate, node))
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None
    ]
    callbacks += default_progress_bar(cfg.trainer, callbacks)  # refreshed every log step on a GPU
    run_keys = [str(key) for key in cfg if key != "hydra"]  # tests compose with the hydra node included
    callbacks.append(
        RunConfigRecorder(OmegaConf.to_container(OmegaConf.masked_copy(cfg, run_keys), resolve=True))
    )
    callbacks.append(ScheduleReport())  # the effective schedule, printed when training starts
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer: L.Trainer = building(
        "trainer",
        cfg.trainer,
        lambda: instantiate(cfg.trainer, callbacks=callbacks, logger=logger, default_root_dir=output_dir),
    )
    check_trainer(trainer)

    status, preempted = "completed", None
    try:
        with reading_files():  # one-line errors before Lightning's own load
            ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
            check_resume_checkpoint(model, ckpt_path)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException as stop:  # pre-empted: last.ckpt was saved (SigtermCheckpoint)
        status, preempted = "preempted", stop

    checkpoints: dict[str, str] = {}
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint):
            if cb.last_model_path:
                checkpoints["last"] = cb.last_model_path
            if cb.best_model_path:
                checkpoints["best"] = cb.best_model_path
    metrics = scalar_metrics(dict(trainer.callback_metrics))
    summary = {
        "status": status,
        "metrics": metrics,
        "checkpoints": checkpoints,
        "output_dir": str(output_dir),
        "wall_time_s": round(time.time() - start, 2),
    }
    if trainer.is_global_zero:
        atomic_write_json(summary, output_dir / "summary.json")
        print(f"summary: {output_dir / 'summary.json'}")
        print(f"output dir: {output_dir}")
        line = knn_line(metrics)
        if line is not None:  # last: the one line to read after a run
            log.info(line)
    if preempted is not None:
        # Leave as Lightning would (a clean exit); a sweep stops here rather than start jobs that the
        # scheduler is about to kill too.
        raise preempted
    return summary
