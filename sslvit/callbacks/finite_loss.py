"""Stop training on a NaN / inf loss before it reaches the weights, keeping the last good checkpoint."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sslvit.callbacks.preemption import last_checkpoint_path

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN or infinite; the message names the step and the terms."""


class FiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` when a step's loss is not finite, before its backward pass.

    Checked before ``backward`` so no optimizer step and no EMA update ever sees the bad value; a crash
    writes no checkpoint (``ModelCheckpoint(save_on_exception=False)``, and
    :class:`~sslvit.callbacks.preemption.CheckpointOnSigterm` only saves on SIGTERM), so ``last.ckpt``
    stays the last good state. The message names the global step, the batch, each logged
    ``train/<term>_loss`` that is not finite and the checkpoint to resume from.

    Under DDP the decision is all-reduced, so every rank stops at the same step (a rank stopping alone
    would leave the others waiting in the next collective forever). Cost: one host sync per step.
    :class:`~sslvit.callbacks.health.HealthMonitor` has a guard of its own for the full health config;
    this one is the minimal guard that every checkpointing config includes.

    Args:
        enabled: switch the check off (e.g. for a benchmark).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._batch_idx = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if not self.enabled:
            return
        finite = bool(torch.isfinite(loss.detach()).all())  # the one host sync
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            return
        raise NonFiniteLossError(self._message(trainer, loss, local=finite))

    def _message(self, trainer: pl.Trainer, loss: torch.Tensor, local: bool) -> str:
        terms = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("train/")
            and key.endswith("_loss")
            and isinstance(value, torch.Tensor)
            and value.numel() == 1
        }
        bad = sorted(key for key, value in terms.items() if not math.isfinite(value))
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        if local:
            what = f"the loss of another rank is not finite (this rank: {float(loss.detach()):.6g})"
        else:
            what = f"train/loss = {float(loss.detach())}"
            if bad:
                what += "; non-finite terms: " + ", ".join(f"{key} = {terms[key]}" for key in bad)
        last = last_checkpoint_path(trainer)
        keep = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        return (
            f"non-finite loss at {where}: {what}. Training stopped before the backward pass; {keep} "
            "(resume with ckpt_path=last, e.g. with a lower lr or more warm-up)"
        )
