"""Reseed the training process before every batch from (seed, rank, epoch, batch): exact resume."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from sslvit.utils.seeding import mix_seed, seed_all


class StepSeeder(Callback):
    """Make the random numbers of each training step a function of where the step is, not of history.

    Drop path, dropout and any other draw inside ``training_step`` then come out the same in a run
    resumed from a mid-epoch checkpoint as in the uninterrupted run, on every rank, without storing
    generator states (which depend on how far data prefetching had run). Data augmentations are
    seeded per sample by the loader (:mod:`sslvit.data.resumable`).

    Args:
        seed: base seed; None = Lightning's global seed (``seed_everything`` sets ``PL_GLOBAL_SEED``),
            else 0. Saved in checkpoints, so a resumed run keeps the seed it started with.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = int(seed) if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_all(mix_seed(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx))

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
