"""Weighted k-NN accuracy of the evaluation features during pretraining (DINO protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from sslvit.callbacks.periodic import PeriodicEvaluation, datamodule_of
from sslvit.eval.knn import knn_accuracy


class KNNEvaluation(PeriodicEvaluation):
    """Weighted k-NN classification of ``pl_module(images)`` features, train split -> val split.

    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (arXiv:2104.14294): l2-normalised features, cosine similarity, the k nearest training features vote
    with weight exp(sim / T); k = 20 and T = 0.07 are the paper's reported setting.

    Logs ``val/knn_top1`` (``primary_k``) and ``val/knn_top1_k{k}`` for every k in ``ks``, in percent,
    after every ``every_n_epochs``-th training epoch and at the end of fit. Both splits come from
    ``datamodule.eval_dataloader(split)``; the datamodule decides the subset sizes.

    Args:
        every_n_epochs: evaluation period in epochs (0: only at the end of fit).
        ks: neighbour counts to report; each is clipped to the train-set size.
        primary_k: the k reported as ``val/knn_top1``.
        temperature: vote temperature T.
        chunk_size: test rows per similarity block (memory: chunk_size * n_train floats).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        ks: Sequence[int] = (10, 20, 100, 200),
        primary_k: int = 20,
        temperature: float = 0.07,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__(every_n_epochs)
        if len(ks) == 0 or min(ks) < 1 or primary_k < 1:
            raise ValueError(f"ks and primary_k must be positive; got ks={list(ks)}, primary_k={primary_k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.ks = tuple(int(k) for k in ks)
        self.primary_k = int(primary_k)
        self.temperature = float(temperature)
        self.chunk_size = int(chunk_size)
        self._warned_clip = False

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
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
        num_classes = int(getattr(datamodule_of(trainer), "num_classes", 0))
        if num_classes <= 0:  # trust the labels when the datamodule does not say
            num_classes = int(torch.cat([train_labels, val_labels]).max()) + 1
        acc = knn_accuracy(
            train_feats,
            train_labels,
            val_feats,
            val_labels,
            num_classes,
            ks=ks,
            temperature=self.temperature,
            chunk_size=self.chunk_size,
        )
        metrics = {"val/knn_top1": acc[self.primary_k]}
        metrics.update({f"val/knn_top1_k{k}": acc[k] for k in self.ks})
        return metrics
