"""One line at the start of every run with the schedule it will really follow.

A run's schedule comes from several config groups (method, data, trainer, a data set's small-data values,
a recipe); printing the result makes a surprise (the wrong epoch count, an lr scaled for another batch)
visible in the first second instead of after the run.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from sslvit.heads.dino_head import DINOHead
from sslvit.tokenizers.base import VisualTokenizer
from sslvit.utils.epoch_length import optimizer_steps_per_epoch

log = logging.getLogger(__name__)


def output_sizes(module: L.LightningModule) -> list[str]:
    """The prototypes of the student's heads and the number of codes of every tokenizer."""
    sizes = []
    for name, child in module.named_modules():
        # The EMA copy has the student's sizes; a frozen distillation teacher's heads are not trained here.
        if isinstance(child, DINOHead) and not name.startswith(("teacher", "frozen_teacher")):
            sizes.append(f"{name.rsplit('.', 1)[-1]} {child.prototypes.shape[0]} prototypes")
        elif isinstance(child, VisualTokenizer):  # trained here (dVAE, VQ-KD) or BEiT's target
            sizes.append(f"{name.rsplit('.', 1)[-1]} {int(child.vocab_size)} codes")
    return sizes


def describe_schedule(trainer: L.Trainer, module: Any) -> str:
    """``total steps = epochs x steps per epoch, global batch, peak lr, ...``, as the schedules see them."""
    total = int(trainer.estimated_stepping_batches)
    # The schedules' own epoch (warm-ups are stated in epochs): a run cut short by max_steps shortens it.
    per_epoch = optimizer_steps_per_epoch(trainer, total)
    epochs = total / per_epoch if per_epoch > 0 else 0.0
    steps = f"{total} optimizer steps = {epochs:g} epochs x {per_epoch:g} steps"
    per_device = getattr(getattr(module, "optim", None), "batch_size_per_device", None)
    parts = [steps]
    if per_device is not None:
        world, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        global_batch = int(per_device) * world * accumulate
        parts.append(
            f"global batch {global_batch} ({per_device} x {world} device(s) x {accumulate} accumulated)"
        )
        optim = module.optim
        parts.append(
            f"peak lr {optim.scaled_lr(global_batch):.3g} (base {optim.base_lr:g}, {optim.lr_scaling} scaling"
            f" from batch {optim.lr_reference_batch}), warm-up {optim.warmup_epochs:g} epochs"
        )
    parts += output_sizes(module)
    return "schedule: " + "; ".join(parts)


class ScheduleReport(Callback):
    """Logs :func:`describe_schedule` once, on rank 0, when training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            log.info(describe_schedule(trainer, pl_module))
