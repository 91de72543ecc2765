"""Trainer settings that Lightning accepts but that cannot give a sensible run here."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Timer

from sslvit.utils.config_errors import ConfigError


def usable_cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and SLURM restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_trainer(trainer: L.Trainer) -> None:
    """Refuse a training length the schedules cannot follow and more CPU processes than cores.

    Schedules (learning rate, weight decay, teacher momentum and temperature) are functions of the step
    and its fraction of the total, so the run needs a finite length: ``max_epochs=-1`` (train until
    stopped) is fine with ``max_steps`` set. ``devices=N`` on the CPU starts N processes, each running
    its own model; more than there are cores only makes every step slower (a 2-core machine running 8 is
    never what was meant).

    Raises:
        ConfigError: neither ``trainer.max_steps`` nor ``trainer.max_epochs`` bounds the run, or
            ``trainer.devices`` exceeds the usable CPU cores of a CPU run.
    """
    # Lightning reads max_epochs=None at fit time as 1000, or as -1 when max_time is set.
    timed = any(isinstance(callback, Timer) for callback in getattr(trainer, "callbacks", []))
    max_epochs = trainer.max_epochs
    if trainer.max_steps == -1 and (max_epochs == -1 or (max_epochs is None and timed)):
        raise ConfigError(
            f"trainer.max_epochs={max_epochs} with trainer.max_steps=-1 has no end in steps, but the "
            "schedules need a total length: set trainer.max_steps=<optimizer steps> or a positive "
            "trainer.max_epochs"
        )
    cores = usable_cpu_cores()
    if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
        raise ConfigError(
            f"trainer.devices={trainer.num_devices} on the CPU would start {trainer.num_devices} "
            f"training processes on {cores} usable cores: use trainer.devices<={cores} (or a GPU)"
        )
