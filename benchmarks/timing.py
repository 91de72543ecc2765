"""Drive the real training step, with or without Lightning's loop, and time each step."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from sslvit.callbacks import FiniteLossGuard, HealthMonitor, StepSeeder
from sslvit.data.batch import MultiCropBatch


class StepMarks:
    """Timestamps at step boundaries: CUDA events on a GPU (no host sync while running), else the clock."""

    def __init__(self, device_type: str) -> None:
        self.cuda = device_type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def durations_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def median_ms(fn: Callable[[], object], device_type: str, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock milliseconds of ``fn`` over ``repeats`` calls after ``warmup`` ones, the device
    synchronised around each call (for work that is not a training step, e.g. one loss or one stage)."""
    times = []
    for _ in range(warmup + repeats):
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device_type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[warmup:])


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def attach_trainer(method: Any, cfg: DictConfig, total_steps: int) -> L.Trainer:
    """Give ``method`` a real, never-fitted Trainer so it can run its step outside ``Trainer.fit``.

    The method reads ``self.trainer`` for ``global_step``, ``estimated_stepping_batches``, world size
    and, for clipping, the strategy. An unfitted Trainer answers all of them: ``max_epochs=-1``
    makes ``estimated_stepping_batches == max_steps`` without a dataloader, and its precision plugin is
    the one ``Trainer.fit`` would use (the same autocast context).
    ``self.log`` needs the fit loop's result collection, which exists only inside ``fit``; the logged
    values are dropped here (instance attributes shadow the two methods on this object only).
    """
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        precision=cfg.trainer.precision,
        max_epochs=-1,
        max_steps=total_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    method.trainer = trainer
    method.log = _no_log
    method.log_dict = _no_log
    return trainer


def detach_trainer(method: Any) -> None:
    """Undo :func:`attach_trainer` (before handing the method to ``Trainer.fit``)."""
    method.trainer = None
    for name in ("log", "log_dict"):
        method.__dict__.pop(name, None)


def set_global_step(trainer: L.Trainer, step: int) -> None:
    # Trainer.global_step is the fit loop's count of completed optimizer steps; outside fit, set it.
    trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed = step


def forward_backward(method: Any, trainer: L.Trainer, batch: MultiCropBatch, step: int) -> torch.Tensor:
    """``training_step`` under the precision plugin's autocast context, then backward; returns the loss."""
    with trainer.precision_plugin.train_step_context():
        loss = method.training_step(batch, step)["loss"]
    method.backward(loss)
    return loss.detach()


def train_step(
    method: Any, optimizer: torch.optim.Optimizer, trainer: L.Trainer, batch: MultiCropBatch, step: int
) -> torch.Tensor:
    """One optimizer step in the order Lightning runs it, through the module's own hooks:
    batch start (e.g. a Gram-teacher refresh) -> schedules -> zero_grad -> training_step + backward ->
    last-layer freeze -> clipping -> AdamW step -> EMA teacher update."""
    set_global_step(trainer, step)
    method.on_train_batch_start(batch, step)
    values = method.apply_schedules(optimizer, step)
    method.optimizer_zero_grad(0, step, optimizer)
    loss = forward_backward(method, trainer, batch, step)
    method.on_before_optimizer_step(optimizer)
    method.configure_gradient_clipping(optimizer)
    optimizer.step()
    method.after_optimizer_step(values)
    return loss


def time_step_mode(
    method: Any, trainer: L.Trainer, batch: MultiCropBatch, num_steps: int, device_type: str
) -> tuple[list[float], list[float]]:
    """Per-step milliseconds and losses of ``num_steps`` steps outside Lightning's loop."""
    optimizer = method.configure_optimizers()
    marks, losses = StepMarks(device_type), []
    for step in range(num_steps):
        marks.mark()
        losses.append(train_step(method, optimizer, trainer, batch, step))
    marks.mark()
    return marks.durations_ms(), [float(x) for x in losses]


class _SameBatch(torch.utils.data.Dataset):
    def __init__(self, batch: MultiCropBatch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> MultiCropBatch:
        return self.batch


class _StepTimer(L.Callback):
    """Marks the start of every batch and the end of training: step period including Lightning's work."""

    def __init__(self, device_type: str) -> None:
        self.marks = StepMarks(device_type)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.marks.mark()

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.marks.mark()


def per_step_callbacks() -> list[L.Callback]:
    """What every training config runs each step besides the step itself (``callbacks=default`` without
    the periodic evaluations and the checkpoint files): the NaN guard (one deliberate host sync per
    step), the health monitor and the per-step seeding."""
    return [FiniteLossGuard(), HealthMonitor(), StepSeeder(seed=0)]


def time_fit_mode(
    method: Any,
    cfg: DictConfig,
    batch: MultiCropBatch,
    num_steps: int,
    device_type: str,
    with_callbacks: bool = False,
) -> tuple[list[float], list[float]]:
    """Per-step milliseconds of ``Trainer.fit`` over a loader that yields the same pre-built batch;
    ``with_callbacks``: also :func:`per_step_callbacks` and a CSV logger writing every
    ``trainer.log_every_n_steps`` steps, as a training run has them."""
    timer = _StepTimer(device_type)
    with tempfile.TemporaryDirectory(prefix="sslvit_bench_fit_") as logs:
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            max_epochs=1,
            max_steps=num_steps,
            limit_train_batches=None,
            logger=CSVLogger(logs) if with_callbacks else False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer, *(per_step_callbacks() if with_callbacks else [])],
        )
        loader = torch.utils.data.DataLoader(_SameBatch(batch, num_steps), batch_size=None, num_workers=0)
        trainer.fit(method, train_dataloaders=loader)
    loss = trainer.callback_metrics.get("train/loss")
    return timer.marks.durations_ms(), [] if loss is None else [float(loss)]
