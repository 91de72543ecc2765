"""How many optimizer steps one epoch of a schedule lasts (schedules state warm-ups in epochs)."""

from __future__ import annotations

import math

import lightning as L


def optimizer_steps_per_epoch(trainer: L.Trainer, total_steps: int) -> float:
    """Optimizer steps per schedule epoch for a run of ``total_steps`` optimizer steps.

    With a positive ``max_epochs`` the run's epochs divide its total (so a run cut short by
    ``max_steps`` shortens its warm-ups in proportion). With ``max_epochs=-1`` the run is bounded by
    ``max_steps`` alone, and an epoch is one pass over the training loader: otherwise "10 warm-up
    epochs" would mean 10 times the whole run.
    """
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        return total_steps / max_epochs
    batches = trainer.num_training_batches  # inf until the loader is set up, or for an iterable one
    if not math.isfinite(batches) or batches <= 0:
        return float(total_steps)
    return float(math.ceil(batches / trainer.accumulate_grad_batches))
