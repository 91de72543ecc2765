"""Stop training on a NaN / inf loss before it reaches the weights, or after too many skipped steps."""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sslvit.callbacks.checkpoint import last_good_checkpoint
from sslvit.callbacks.preemption import last_checkpoint_path

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss of a training step was NaN or infinite; the message names the step and the terms."""


class NonFiniteGradientError(FloatingPointError):
    """Too many optimizer steps in a row were skipped for non-finite gradients; the message names the
    clipping groups and the loss terms that were not finite."""


class FiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` when a step's loss is not finite, before its backward pass, and
    :class:`NonFiniteGradientError` after ``max_consecutive_skips`` optimizer steps in a row skipped.

    The loss is checked before ``backward``, so no optimizer step and no EMA update ever sees the bad
    value. A finite loss can still give NaN / inf gradients: the method's
    :class:`~sslvit.methods.step_guard.NonFiniteStepGuard` then skips the step on the device (weights,
    AdamW moments and teacher unchanged; ``train/skipped_steps`` counts them), and this guard stops the
    run when the skips do not stop. Its count of consecutive skips is read in the same host read as the
    loss check, so it adds no wait of its own. A crash writes no checkpoint
    (``ModelCheckpoint(save_on_exception=False)``, and
    :class:`~sslvit.callbacks.preemption.SigtermCheckpoint` only saves on SIGTERM). The message names
    the global step, the batch, each logged ``train/<term>_loss`` that is not finite and the last
    checkpoint whose tensors were checked finite (the file itself, not the ``last.ckpt`` link, which a
    later save moves).

    Under DDP the loss decision is all-reduced, so every rank stops at the same step (a rank stopping
    alone would leave the others waiting in the next collective forever); the skip count is the same on
    every rank (the gradient norms are). Cost: one host sync per step.
    :class:`~sslvit.callbacks.health.HealthMonitor` has a guard of its own for the full health config;
    this one is the minimal guard that every checkpointing config includes.

    Args:
        enabled: switch the checks off (e.g. for a benchmark); steps are still skipped, never stopped.
        max_consecutive_skips: stop after this many optimizer steps in a row were skipped.
    """

    def __init__(self, enabled: bool = True, max_consecutive_skips: int = 10) -> None:
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.enabled = enabled
        self.max_consecutive_skips = int(max_consecutive_skips)
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
        guard = getattr(pl_module, "step_guard", None)
        consecutive = getattr(guard, "consecutive", None)
        finite_loss = torch.isfinite(loss.detach()).all()
        if consecutive is None:
            finite, skips = bool(finite_loss), 0  # the one host sync
        else:  # the one host sync, for both
            flag, skips = torch.stack([finite_loss.long(), consecutive.to(finite_loss.device)]).tolist()
            finite = bool(flag)
        if not trainer.strategy.reduce_boolean_decision(finite, all=True):
            raise NonFiniteLossError(self._loss_message(trainer, loss, local=finite))
        if skips >= self.max_consecutive_skips:
            raise NonFiniteGradientError(self._skip_message(trainer, guard, skips))

    def _where(self, trainer: pl.Trainer) -> str:
        return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"

    def _loss_message(self, trainer: pl.Trainer, loss: torch.Tensor, local: bool) -> str:
        terms = _logged_loss_terms(trainer)
        bad = sorted(key for key, value in terms.items() if not math.isfinite(value))
        if local:
            what = f"the loss of another rank is not finite (this rank: {float(loss.detach()):.6g})"
        else:
            what = f"train/loss = {float(loss.detach())}"
            if bad:
                what += "; non-finite terms: " + ", ".join(f"{key} = {terms[key]}" for key in bad)
        return (
            f"non-finite loss at {self._where(trainer)}: {what}. Training stopped before the backward "
            f"pass; {_resume_from(trainer)}"
        )

    def _skip_message(self, trainer: pl.Trainer, guard: Any, skips: int) -> str:
        groups = guard.nonfinite_groups()
        shown = ", ".join(groups[:8]) + (f" and {len(groups) - 8} more" if len(groups) > 8 else "")
        terms = _logged_loss_terms(trainer)  # of the last step, which was skipped
        bad = sorted(key for key, value in terms.items() if not math.isfinite(value))
        losses = ("non-finite loss terms: " + ", ".join(bad)) if bad else "all loss terms finite"
        return (
            f"{skips} optimizer steps in a row skipped up to {self._where(trainer)}: their gradients "
            f"were not finite (last skipped step: clipping groups {shown or 'unknown'}; {losses}). "
            f"The weights, optimizer moments and teacher are those of the last applied step; "
            f"{_resume_from(trainer)}"
        )


def _logged_loss_terms(trainer: pl.Trainer) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.startswith("train/")
        and key.endswith("_loss")
        and isinstance(value, torch.Tensor)
        and value.numel() == 1
    }


def _resume_from(trainer: pl.Trainer) -> str:
    good = last_good_checkpoint(trainer)
    checks = any(hasattr(cb, "last_good_model_path") for cb in trainer.checkpoint_callbacks)
    last = last_checkpoint_path(trainer)
    if good is None and not checks and last.exists():  # a checkpoint callback that checks nothing
        return f"the last checkpoint is {last} (its tensors were not checked finite)"
    if good is None:
        return "no checkpoint was checked finite yet (start again with a lower lr or more warm-up)"
    return (
        f"the last good checkpoint is {good} (resume with ckpt_path={good}, e.g. with a lower lr or "
        "more warm-up)"
    )
