"""Weighted k-nearest-neighbour classification of frozen features (the DINO evaluation protocol).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294),
following Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance Discrimination", CVPR 2018:
features are l2-normalised, each test point retrieves its k most cosine-similar training points, and every
neighbour votes for its class with weight exp(similarity / T). Defaults k = 20, T = 0.07.

Pure torch (no Lightning), so the same function serves the training callback and offline evaluation
(:func:`knn_evaluation`, ``python eval.py eval=knn``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sslvit.eval.features import extract_backbone_features, feature_slices, select
from sslvit.eval.inputs import EvalInputs
from sslvit.eval.neighbours import NearestNeighbours, vote
from sslvit.eval.pixel_knn import normalization_of, pixel_knn_accuracy

log = logging.getLogger(__name__)


def _check_inputs(
    train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor, num_classes: int
) -> None:
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            f"features must be 2-D (n, D); got train {tuple(train_features.shape)}, "
            f"test {tuple(test_features.shape)}"
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"train and test feature dims differ: {train_features.shape[1]} vs {test_features.shape[1]}"
        )
    if train_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training feature; got an empty train set")
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},); got {tuple(train_labels.shape)}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if train_labels.numel() and (int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes):
        raise ValueError(
            f"train_labels must lie in [0, {num_classes}); got range "
            f"[{int(train_labels.min())}, {int(train_labels.max())}]"
        )


def _neighbours(
    train_features: torch.Tensor, test_features: torch.Tensor, k: int, chunk_size: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (start row, top-k similarities (c,k) sorted descending, their train indices (c,k)) per chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1).to(train.device)
    # Chunking over test rows bounds the (chunk, n_train) similarity matrix, the only large intermediate.
    for start in range(0, test.shape[0], chunk_size):
        sims = test[start : start + chunk_size] @ train.T  # (c, n_train)
        top_sims, top_idx = sims.topk(k, dim=1, largest=True, sorted=True)
        yield start, top_sims, top_idx


def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Class scores of a temperature-weighted cosine k-NN vote.

    Args:
        train_features: (n_train, D) features of the labelled reference set (need not be normalised).
        train_labels: (n_train,) int64 class ids in [0, num_classes).
        test_features: (n_test, D) features to classify.
        num_classes: number of classes C.
        k: neighbours per test point; clipped to n_train.
        temperature: T in the vote weight exp(cosine similarity / T).
        chunk_size: test rows per similarity block (memory is chunk_size * n_train floats).

    Returns:
        (n_test, C) float32 scores on the device of ``train_features``: for each class, the summed
        weights of the neighbours carrying that label. ``scores.argmax(1)`` is the prediction.
    """
    _check_inputs(train_features, train_labels, test_features, num_classes)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    k = min(k, train_features.shape[0])
    labels = train_labels.to(train_features.device)
    out = torch.empty(test_features.shape[0], num_classes, device=train_features.device)
    for start, top_sims, top_idx in _neighbours(train_features, test_features, k, chunk_size):
        out[start : start + top_sims.shape[0]] = vote(top_sims, labels[top_idx], num_classes, temperature)
    return out


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    ks: Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict[int, float]:
    """Top-1 accuracy (in %) of the weighted k-NN classifier for several k at once.

    The neighbours are retrieved once for max(ks) (sorted), and each k votes with its first k of them,
    so evaluating k = 10, 20, 100, 200 costs one similarity pass.

    Args:
        train_features, train_labels, test_features, num_classes, temperature, chunk_size:
            as in :func:`weighted_knn_predict`.
        test_labels: (n_test,) int64 ground-truth ids of the test points.
        ks: neighbour counts to evaluate; each is clipped to n_train (the key stays the requested k).

    Returns:
        ``{k: top-1 accuracy in percent}`` for every requested k.
    """
    _check_inputs(train_features, train_labels, test_features, num_classes)
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive ints; got {list(ks)}")
    if test_labels.shape != (test_features.shape[0],):
        raise ValueError(
            f"test_labels must have shape ({test_features.shape[0]},); got {tuple(test_labels.shape)}"
        )
    if test_features.shape[0] == 0:
        raise ValueError("k-NN accuracy needs at least one test feature; got an empty test set")
    k_max = min(max(ks), train_features.shape[0])
    neighbours = NearestNeighbours(test_features, k_max, chunk_size, device=train_features.device)
    neighbours.add(train_features, train_labels)
    return neighbours.accuracy(test_labels, ks, num_classes, temperature)


def knn_evaluation(
    inputs: EvalInputs,
    ks: Sequence[int],
    temperature: float,
    pixels: bool = True,
    pixels_centered: bool = True,
    pixels_max_query_gb: float = 4.0,
) -> dict[str, Any]:
    """``eval=knn``: weighted k-NN (DINO protocol) on the last block's normalised CLS features, and with
    ``pixels`` the same k-NN on the raw pixels of the same subsets (:mod:`sslvit.eval.pixel_knn`)."""
    datamodule = inputs.datamodule()
    backbone, device = inputs.backbone.to(inputs.device), inputs.device
    train_x, train_y = extract_backbone_features(backbone, datamodule.eval_dataloader("train"), 1, device)
    val_x, val_y = extract_backbone_features(backbone, datamodule.eval_dataloader("val"), 1, device)
    cls = feature_slices(train_x.shape[1] // 2, 1, 1, avgpool=False)
    accuracy = knn_accuracy(
        select(train_x, cls), train_y, select(val_x, cls), val_y, datamodule.num_classes, ks, temperature
    )
    metrics = {f"knn_top1_k{k}": acc for k, acc in accuracy.items()}
    if pixels:
        floors = pixel_knn_accuracy(
            datamodule.eval_dataloader("train"),
            datamodule.eval_dataloader("val"),
            datamodule.num_classes,
            ks,
            temperature,
            device=device,
            normalization=normalization_of(datamodule.eval_transform),
            centered=pixels_centered,
            max_query_gb=pixels_max_query_gb,
        )
        for name, floor in floors.items():
            metrics.update({f"knn_top1_{name}_k{k}": acc for k, acc in floor.items()})
        k = 20 if 20 in accuracy else next(iter(accuracy))
        log.info("k-NN top-1 (k=%d): %.2f (raw pixels %.2f)", k, accuracy[k], floors["pixels"][k])
    return {"metrics": metrics}
