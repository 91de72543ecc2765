"""A progress bar that reads the loss back from the GPU every few steps, not every step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's TQDM bar, refreshed every ``accelerator_refresh_rate`` batches when training runs on an
    accelerator and every batch on the CPU.

    Each refresh shows the logged loss, which Lightning converts to a Python float: on a GPU that makes
    the host wait until the step is done, so the queue of kernels runs dry at every refresh. Lightning's
    default bar refreshes every batch; ``train.py`` installs this one instead (the trainer config's
    ``log_every_n_steps`` as the rate, so the bar and the loggers read the same steps).
    """

    def __init__(self, accelerator_refresh_rate: int = 10, process_position: int = 0) -> None:
        if accelerator_refresh_rate < 1:
            raise ValueError(f"accelerator_refresh_rate must be >= 1, got {accelerator_refresh_rate}")
        super().__init__(refresh_rate=1, process_position=process_position)
        self.accelerator_refresh_rate = int(accelerator_refresh_rate)
        self._on_accelerator = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._on_accelerator = trainer.strategy.root_device.type != "cpu"

    @property
    def refresh_rate(self) -> int:
        if self._on_accelerator and self._refresh_rate > 0:  # 0 (disabled) stays disabled
            return max(self._refresh_rate, self.accelerator_refresh_rate)
        return self._refresh_rate


def default_progress_bar(trainer_cfg: Any, callbacks: list[Any]) -> list[pl.Callback]:
    """``[StepProgressBar]`` if the trainer config shows a bar and no progress bar is configured, else []."""
    if not trainer_cfg.get("enable_progress_bar", True):
        return []
    if any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
        return []
    return [StepProgressBar(accelerator_refresh_rate=max(1, int(trainer_cfg.get("log_every_n_steps") or 1)))]
