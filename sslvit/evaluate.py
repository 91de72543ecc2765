"""The offline evaluation task: ``python eval.py eval=<knn|linear|finetune|export> checkpoint=<file>``.

The backbone is the EMA teacher's (the student's when the teacher is a frozen network) of one of our
checkpoints, rebuilt from the run config stored in it under ``sslvit_config`` (only from sslvit's own
backbone and data classes: a stored config is data, see :mod:`sslvit.utils.safe_config`); or a released DINO,
iBOT or DINOv2 backbone (:mod:`sslvit.eval.checkpoint_import`), built from what its weights say, with a
dataset chosen on the command line (``data=fashion_mnist``). Each evaluation writes
``eval_summary.json`` (and its own files) into the Hydra output folder. An evaluation is the function
that ``conf/eval/<name>.yaml`` names in ``_target_`` (:class:`~sslvit.eval.inputs.EvalInputs` first,
then that file's values): a new evaluation is a new config file and function, not a branch here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sslvit.backbones import MaskedViT
from sslvit.eval.checkpoint_import import (
    ImportedBackbone,
    complete_for,
    import_backbone_state,
    load_any_checkpoint,
)
from sslvit.eval.inputs import EvalInputs
from sslvit.train import output_dir_of
from sslvit.utils.atomic_write import atomic_write_json
from sslvit.utils.checkpoint import load_backbone_weights
from sslvit.utils.checkpoint_reader import RUN_CONFIG_KEY
from sslvit.utils.config_errors import building, reading_files
from sslvit.utils.matmul_precision import set_float32_matmul_precision
from sslvit.utils.safe_config import instantiate_stored

log = logging.getLogger(__name__)


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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.eval`` on ``cfg.checkpoint``; write and return ``eval_summary.json``.

    ``cfg.eval`` names its evaluation in ``_target_``: a function of :class:`~sslvit.eval.inputs.EvalInputs`
    and the config's other values (besides ``name``) that returns ``{"metrics": {...}, ...}``.
    """
    start = time.time()
    name = cfg.eval.get("name") if isinstance(cfg.eval, DictConfig) else None
    if not isinstance(cfg.eval, DictConfig) or "_target_" not in cfg.eval:
        raise ValueError(
            f"unknown eval={name or cfg.eval!r}; an evaluation config (conf/eval/<name>.yaml) names its "
            "function in `_target_`"
        )
    ecfg = cfg.eval
    seed = int(cfg.get("seed") or 0)
    torch.manual_seed(seed)
    set_float32_matmul_precision(cfg.get("float32_matmul_precision"))
    overrides = OmegaConf.to_container(cfg.backbone, resolve=True) if cfg.get("backbone") else {}
    with reading_files():  # a missing, truncated, unsafe or crafted checkpoint: one line
        backbone, run_cfg, imported = load_backbone(cfg.checkpoint, overrides)  # type: ignore[arg-type]
    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
    device = "cpu" if device == "auto" else device
    output_dir = output_dir_of(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    inputs = EvalInputs(
        backbone=backbone,
        device=device,
        seed=seed,
        output_dir=output_dir,
        datamodule=lambda: build_datamodule(cfg, run_cfg),
        has_data_config=run_cfg is not None or "_target_" in (cfg.get("data") or {}),
    )
    values: dict[str, Any] = OmegaConf.to_container(ecfg, resolve=True)  # type: ignore[assignment]
    target = values.pop("_target_")
    node = OmegaConf.create({"_target_": target, **{k: v for k, v in values.items() if k != "name"}})
    evaluation = building("eval", node, lambda: instantiate(node, _partial_=True, _convert_="all"))
    result = evaluation(inputs)
    summary = {
        "eval": name,
        "checkpoint": str(cfg.checkpoint),
        "layout": imported.layout,
        **result,
        "config": values,
        "output_dir": str(output_dir),
        "wall_time_s": round(time.time() - start, 2),
    }
    atomic_write_json(summary, output_dir / "eval_summary.json")
    print(json.dumps(summary["metrics"], indent=2))
    print(f"output dir: {output_dir}")
    return summary
