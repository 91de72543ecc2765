"""Weighted k-NN accuracy of the evaluation features during pretraining (DINO protocol), beside its two
references: the same k-NN on raw pixels (the floor) and on the network before training."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from sslvit.callbacks.periodic import PeriodicEvaluation, datamodule_of
from sslvit.eval.knn import knn_accuracy
from sslvit.eval.pixel_knn import PixelMemoryError, normalization_of, pixel_knn_accuracy

log = logging.getLogger(__name__)


class KNNEvaluation(PeriodicEvaluation):
    """Weighted k-NN classification of ``pl_module(images)`` features, train split -> val split.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (arXiv:2104.14294): l2-normalised features, cosine similarity, the k nearest training features vote
    with weight exp(sim / T); k = 20 and T = 0.07 are the paper's reported setting.

    Logs ``val/knn_top1`` (``primary_k``) and ``val/knn_top1_k{k}`` for every k in ``ks``, in percent,
    after every ``every_n_epochs``-th training epoch and at the end of fit. Both splits come from
    ``datamodule.eval_dataloader(split)``; the datamodule decides the subset sizes.

    Beside them, at every evaluation: ``val/knn_top1_pixels``, the same k-NN (``primary_k``, T, subsets)
    on the raw pixels of the evaluation images (normalisation undone: values in [0, 1]; computed once
    per datamodule, :mod:`sslvit.eval.pixel_knn`), ``val/knn_top1_pixels_centered`` on pixels minus the
    bank's per-pixel mean, ``val/knn_top1_init``, the k-NN of the network before its first optimizer step
    (measured when training starts at step 0 and kept in the callback's checkpoint state, so a resumed
    run still reports it), ``val/wall_s`` (seconds since the start of fit, summed over resumed runs) and
    ``val/images_seen`` (optimizer steps x global batch). The references are also logged once at step 0.

    Args:
        every_n_epochs: evaluation period in epochs (0: only at the end of fit).
        ks: neighbour counts to report; each is clipped to the train-set size.
        primary_k: the k reported as ``val/knn_top1``.
        temperature: vote temperature T.
        chunk_size: test rows per similarity block (memory: chunk_size * n_train floats).
        init_eval: measure ``val/knn_top1_init`` when training starts (one more feature pass).
        pixels: measure the raw-pixel k-NN (one pass over both subsets, two with ``pixels_centered``).
        pixels_centered: also the k-NN on bank-mean-centred pixels.
        pixels_max_query_gb: the raw-pixel k-NN holds the query pixels (n_val * C*H*W float32); beyond
            this many GiB it is skipped with a warning.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        ks: Sequence[int] = (10, 20, 100, 200),
        primary_k: int = 20,
        temperature: float = 0.07,
        chunk_size: int = 1024,
        init_eval: bool = True,
        pixels: bool = True,
        pixels_centered: bool = True,
        pixels_max_query_gb: float = 4.0,
    ) -> None:
        super().__init__(every_n_epochs)
        if len(ks) == 0 or min(ks) < 1 or primary_k < 1:
            raise ValueError(f"ks and primary_k must be positive; got ks={list(ks)}, primary_k={primary_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        if pixels_max_query_gb <= 0:
            raise ValueError(f"pixels_max_query_gb must be > 0; got {pixels_max_query_gb}")
        self.ks = tuple(int(k) for k in ks)
        self.primary_k = int(primary_k)
        self.temperature = float(temperature)
        self.chunk_size = int(chunk_size)
        self.init_eval = bool(init_eval)
        self.pixels = bool(pixels)
        self.pixels_centered = bool(pixels_centered)
        self.pixels_max_query_gb = float(pixels_max_query_gb)
        self._warned_clip = False
        self._init_top1: float | None = None
        self._pixel_metrics: dict[str, float] = {}
        self._pixels_of: weakref.ref | None = None  # the datamodule whose pixels _pixel_metrics hold
        self._clock_start = time.monotonic()
        self._wall_before = 0.0  # seconds of fit before this process resumed the run

    # -- the learned representation --------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        acc = self._accuracy(trainer, pl_module)
        metrics = {"val/knn_top1": acc[self.primary_k]}
        metrics.update({f"val/knn_top1_k{k}": acc[k] for k in self.ks})
        # The references again at every point, so that the last values (summary.json) carry them.
        return {**metrics, **self._references(trainer), **self._progress(trainer, pl_module)}

    def _accuracy(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[int, float]:
        train_feats, train_labels = self.features(trainer, pl_module, "train")
        val_feats, val_labels = self.features(trainer, pl_module, "val")
        # Unlabelled rows (-1) can neither vote nor be scored.
        train_keep, val_keep = train_labels >= 0, val_labels >= 0
        train_feats, train_labels = train_feats[train_keep], train_labels[train_keep]
        val_feats, val_labels = val_feats[val_keep], val_labels[val_keep]
        ks = tuple(dict.fromkeys((self.primary_k, *self.ks)))
        if max(ks) > train_feats.shape[0] and not self._warned_clip:
            rank_zero_warn(f"KNNEvaluation: k > train-set size {train_feats.shape[0]}; k is clipped to it.")
            self._warned_clip = True
        num_classes = self._num_classes(trainer, train_labels, val_labels)
        return knn_accuracy(
            train_feats,
            train_labels,
            val_feats,
            val_labels,
            num_classes,
            ks=ks,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )

    @staticmethod
    def _num_classes(trainer: pl.Trainer, *labels: torch.Tensor) -> int:
        num_classes = int(getattr(datamodule_of(trainer), "num_classes", 0))
        if num_classes <= 0:  # trust the labels when the datamodule does not say
            num_classes = int(torch.cat(labels).max()) + 1
        return num_classes

    # -- the references: raw pixels and the untrained network --------------------------------------
    def _references(self, trainer: pl.Trainer) -> dict[str, float]:
        out = dict(self.pixel_metrics(trainer))
        if self._init_top1 is not None:
            out["val/knn_top1_init"] = self._init_top1
        return out

    def pixel_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
        """``val/knn_top1_pixels`` (and ``_centered``) of the trainer's datamodule, computed once per
        datamodule (the pixels never change); empty when ``pixels`` is off or they would not fit."""
        datamodule = datamodule_of(trainer)
        if not self.pixels or datamodule is None:
            return {}
        if self._pixels_of is not None and self._pixels_of() is datamodule:
            return self._pixel_metrics
        start = time.monotonic()
        try:
            accuracy = pixel_knn_accuracy(
                datamodule.eval_dataloader("train"),
                datamodule.eval_dataloader("val"),
                int(getattr(datamodule, "num_classes", 0)) or None,
                ks=(self.primary_k,),
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                device=trainer.strategy.root_device,
                normalization=normalization_of(getattr(datamodule, "eval_transform", None)),
                centered=self.pixels_centered,
                max_query_gb=self.pixels_max_query_gb,
            )
        except PixelMemoryError as err:
            rank_zero_warn(f"KNNEvaluation: raw-pixel k-NN skipped: {err}")
            accuracy = {}
        self._pixel_metrics = {f"val/knn_top1_{name}": acc[self.primary_k] for name, acc in accuracy.items()}
        self._pixels_of = weakref.ref(datamodule)
        if accuracy:
            values = ", ".join(f"{key} {value:.2f}" for key, value in self._pixel_metrics.items())
            rank_zero_info(
                f"raw-pixel k-NN (k={self.primary_k}): {values} ({time.monotonic() - start:.0f} s)"
            )
        return self._pixel_metrics

    def _progress(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        global_batch = getattr(pl_module, "global_batch_size", None)
        if global_batch is None:  # a module without the pretraining base: the loader's batch
            per_device = int(getattr(datamodule_of(trainer), "batch_size", 0) or 0)
            global_batch = per_device * trainer.world_size * trainer.accumulate_grad_batches
        return {
            "val/wall_s": self._wall_s(),
            "val/images_seen": float(trainer.global_step * int(global_batch)),
        }

    def _wall_s(self) -> float:
        return self._wall_before + time.monotonic() - self._clock_start

    # -- Lightning hooks ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._clock_start = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        # After a resume the weights are no longer the initial ones: the stored value stands.
        if self.init_eval and self._init_top1 is None and trainer.global_step == 0:
            self._init_top1 = self._accuracy(trainer, pl_module)[self.primary_k]
        metrics = self._references(trainer)
        if not metrics:
            return
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        if trainer.global_step == 0:  # a resumed run logs them with its next evaluation
            row = {**metrics, **self._progress(trainer, pl_module), "epoch": trainer.current_epoch}
            for logger in trainer.loggers:  # Lightning's loggers only write on rank 0
                logger.log_metrics(row, step=0)

    def state_dict(self) -> dict[str, Any]:
        return {"init_top1": self._init_top1, "wall_s": self._wall_s()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("init_top1") is not None:
            self._init_top1 = float(state_dict["init_top1"])
        self._wall_before = float(state_dict.get("wall_s", 0.0))
