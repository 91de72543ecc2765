"""Extract evaluation features from a LightningModule over an evaluation loader, across ranks
(gathering, de-duplication and ordering: :func:`sslvit.eval.rows.collect_rows`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from sslvit.eval.rows import collect_rows


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and afterwards restore each submodule's own flag.

    A plain ``module.train()`` afterwards would also switch the EMA teacher (kept in eval mode on purpose,
    no dropout / drop path) to training mode, so every submodule's flag is recorded and written back.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag


@torch.no_grad()
def extract_features(
    pl_module: pl.LightningModule, loader: Iterable[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``pl_module(images)`` over ``loader`` and collect features and labels from all ranks.

    Args:
        pl_module: module whose ``forward(images) -> (B, D)`` gives evaluation features.
        loader: yields ``(images (B,C,H,W), labels (B,), indices (B,))``; ``indices`` may be omitted
            without a process group (rows are then numbered in loader order).

    Returns:
        ``features (n, D) float32`` and ``labels (n,) int64`` on ``pl_module.device``, one row per dataset
        index, sorted by index, identical on every rank.
    """
    trainer = getattr(pl_module, "_trainer", None)  # None when used offline, outside a Trainer
    # Same autocast as validation steps (e.g. bf16-mixed); features are cast back to float32.
    precision = (
        trainer.precision_plugin.val_step_context() if trainer is not None else contextlib.nullcontext()
    )
    with eval_mode(pl_module), precision:
        return collect_rows(pl_module, loader, pl_module.device)
