"""Small stand-ins for a method LightningModule and the SSL DataModule, for callback tests.

Tests get them through the factory fixtures ``make_module`` and ``make_datamodule`` (the test suite
runs with ``--import-mode=importlib``, where test files cannot import sibling modules).

Images are (C=dim, 1, 1) tensors and the module's features are the flattened image times a scalar
``gain`` (1.0): the features are known exactly, so the expected k-NN accuracy can be computed offline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sslvit.data.batch import MultiCropBatch


def make_split(
    n: int, num_classes: int, dim: int, seed: int, flip: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable features (class one-hot * 5 + noise) as (n, dim, 1, 1) images; the first ``flip`` rows
    get a wrong label, so a perfect classifier scores exactly 100 * (n - flip) / n."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    feats = 5.0 * torch.eye(dim)[labels] + 0.3 * torch.randn(n, dim, generator=g)
    labels = labels.clone()
    labels[:flip] = (labels[:flip] + 1) % num_classes
    return feats[:, :, None, None], labels


class _TrainSet(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def _collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> MultiCropBatch:
    images = torch.stack([im for im, _ in items])
    labels = torch.stack([y for _, y in items])
    return MultiCropBatch(global_crops=[images, images.clone()], local_crops=[], labels=labels)


class ToyDataModule(pl.LightningDataModule):
    """``train_dataloader`` yields MultiCropBatch; ``eval_dataloader(split)`` yields (images, labels, idx)."""

    def __init__(
        self,
        n_train: int = 64,
        n_val: int = 32,
        num_classes: int = 4,
        dim: int = 8,
        has_labels: bool = True,
        val_flip: int = 0,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.train = make_split(n_train, num_classes, dim, seed=0)
        self.val = make_split(n_val, num_classes, dim, seed=1, flip=val_flip)
        self.num_classes = num_classes if has_labels else 0
        self.has_labels = has_labels
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        images, labels = self.train
        labels = labels if self.has_labels else torch.full_like(labels, -1)
        return DataLoader(
            _TrainSet(images, labels), batch_size=self.batch_size, shuffle=True, collate_fn=_collate
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        images, labels = self.train if split == "train" else self.val
        dataset = TensorDataset(images, labels, torch.arange(len(labels)))
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)


class StandInMethod(pl.LightningModule):
    """``forward(images) = images.flatten(1) * gain``; ``training_step`` pulls ``gain`` towards 2 with an
    SGD of lr 0, so ``gain`` stays 1 and its grad is exactly -2 after every backward. ``detach_features``
    False imitates a method that forgot to detach its output features."""

    def __init__(self, dim: int = 8, detach_features: bool = True, features_in_outputs: bool = True) -> None:
        super().__init__()
        self.embed_dim = dim
        self.gain = nn.Parameter(torch.ones(()))
        self.detach_features = detach_features
        self.features_in_outputs = features_in_outputs
        self.grads_seen: list[float] = []  # gain.grad at the end of each batch (after callbacks ran)
        self.forward_modes: list[bool] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.forward_modes.append(self.training)
        return images.flatten(1) * self.gain

    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        features = self(batch.global_crops[0])
        loss = (self.gain - 2.0) ** 2
        if not self.features_in_outputs:
            return {"loss": loss}
        return {"loss": loss, "features": features.detach() if self.detach_features else features}

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        assert self.gain.grad is not None
        self.grads_seen.append(float(self.gain.grad))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.fixture
def make_module() -> Callable[..., StandInMethod]:
    return StandInMethod


@pytest.fixture
def make_datamodule() -> Callable[..., ToyDataModule]:
    return ToyDataModule


@pytest.fixture
def make_batch() -> Callable[..., Any]:
    """``make_batch(images, labels)`` -> MultiCropBatch with the images as both global crops."""
    return lambda images, labels: _collate(list(zip(images, labels)))
