"""Shared scheduling for evaluation callbacks: every n-th training epoch and always at the end of fit.

Evaluations at a training epoch end are logged through ``pl_module.log`` (so they reach the loggers,
``trainer.callback_metrics`` and a ``ModelCheckpoint`` monitor). The epoch-end hook recognises the last
epoch from ``max_epochs``, ``max_steps`` (also mid-epoch), ``fast_dev_run`` and ``should_stop`` (e.g. set
by the ``max_time`` Timer during the epoch). When fit stops in a way it could not foresee (a callback that
runs after this one sets ``should_stop`` at the epoch end, e.g. EarlyStopping), the evaluation runs in
``on_train_end`` instead; Lightning forbids ``self.log`` there, so the metrics are written to
``trainer.callback_metrics`` and the loggers directly.
"""

from __future__ import annotations

import weakref
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from sslvit.callbacks.features import extract_features

Split = Literal["train", "val"]


class _ValFeatureCache:
    """Val features of the latest evaluation point, shared by the k-NN and linear-probe callbacks.

    Both evaluate at the same points with the same weights; caching the (small) val split saves one
    feature pass. The key holds weak references so a new Trainer / module / datamodule never hits a
    stale entry, plus the global step, which changes whenever the weights do.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = datamodule_of(trainer)
        key = (weakref.ref(trainer), weakref.ref(pl_module), weakref.ref(datamodule), trainer.global_step)
        if self._value is None or self._key != key:
            self._value = extract_features(pl_module, datamodule.eval_dataloader("val"))
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key = self._value = None


_VAL_CACHE = _ValFeatureCache()


def datamodule_of(trainer: pl.Trainer) -> Any:
    """``trainer.datamodule`` (attached at runtime, so invisible to type checkers), or None."""
    return getattr(trainer, "datamodule", None)


def _is_last_epoch(trainer: pl.Trainer) -> bool:
    """Whether fit will stop after the current training epoch, as far as the epoch-end hook can tell."""
    if getattr(trainer, "fast_dev_run", False) or trainer.should_stop:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs:
        return True
    max_steps = trainer.max_steps
    return max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps


class PeriodicEvaluation(pl.Callback):
    """Base class: calls :meth:`evaluate` every ``every_n_epochs`` epochs and once at the end of fit.

    Subclasses implement :meth:`evaluate` returning ``{metric key: value}``. Evaluation is skipped (with
    one warning) when the datamodule has no labels.

    Args:
        every_n_epochs: evaluate after every n-th training epoch; 0 evaluates only at the end of fit.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0; got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self._enabled = False
        self._trained_since_eval = False

    # -- subclass API -------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        raise NotImplementedError

    def features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: Split
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and labels of an evaluation split (val cached across callbacks for this step)."""
        if split == "val":
            return _VAL_CACHE.get(trainer, pl_module)
        return extract_features(pl_module, datamodule_of(trainer).eval_dataloader(split))

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = datamodule_of(trainer)
        if datamodule is None or not callable(getattr(datamodule, "eval_dataloader", None)):
            raise TypeError(
                f"{type(self).__name__} needs a datamodule with eval_dataloader(split); "
                f"got {type(datamodule).__name__}"
            )
        self._enabled = bool(getattr(datamodule, "has_labels", False))
        if not self._enabled:
            rank_zero_warn(f"{type(self).__name__}: the datamodule has no labels; evaluation is skipped.")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._trained_since_eval = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        periodic = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not self._enabled or not (periodic or _is_last_epoch(trainer)):
            return
        for key, value in self._run(trainer, pl_module).items():
            # Every rank computed the same value from gathered features: no sync needed.
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=False, batch_size=1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled or not self._trained_since_eval:
            return
        metrics = self._run(trainer, pl_module)
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:  # Lightning's loggers only write on rank 0
            logger.log_metrics({**metrics, "epoch": trainer.current_epoch}, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _VAL_CACHE.clear()  # release device memory held by the shared val features

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics = self.evaluate(trainer, pl_module)
        self._trained_since_eval = False
        return metrics
