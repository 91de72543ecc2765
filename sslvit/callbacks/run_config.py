"""Store the resolved run configuration inside every checkpoint."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class RunConfigRecorder(Callback):
    """Adds the resolved config (plain dict) to checkpoints so ``eval.py`` can rebuild the model from
    the checkpoint alone, without the original command line."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["sslvit_config"] = self.config
