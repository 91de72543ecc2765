"""Weighted k-NN (DINO protocol) against hand-computed votes and known outcomes."""

from __future__ import annotations

import math

import pytest
import torch

from sslvit.eval.knn import knn_accuracy, weighted_knn_predict

# Four 2-D training points; cosine similarities to the queries are easy to write down.
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
TRAIN_LABELS = torch.tensor([0, 1, 1, 0])
# Queries are not unit length: the function must normalise them.
QUERIES = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
S = 1 / math.sqrt(2)  # cosine between (1,1) and an axis


@pytest.mark.parametrize(
    ("k", "expected"),
    [
        # q0 = (1,0): sims a=1, c=S, b=0, d=-1.  q1 = (0,1): sims b=1, c=S, a=d=0.
        (1, [[math.exp(1 / 0.5), 0.0], [0.0, math.exp(1 / 0.5)]]),
        (2, [[math.exp(2), math.exp(2 * S)], [0.0, math.exp(2) + math.exp(2 * S)]]),
        (4, [[math.exp(2) + math.exp(-2), math.exp(2 * S) + 1.0], [2.0, math.exp(2) + math.exp(2 * S)]]),
    ],
)
def test_weighted_votes_match_hand_computation(k: int, expected: list[list[float]]) -> None:
    scores = weighted_knn_predict(TRAIN, TRAIN_LABELS, QUERIES, num_classes=2, k=k, temperature=0.5)
    assert scores.dtype == torch.float32 and scores.shape == (2, 2)
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_k_larger_than_train_set_is_clipped() -> None:
    clipped = weighted_knn_predict(TRAIN, TRAIN_LABELS, QUERIES, num_classes=2, k=50, temperature=0.5)
    full = weighted_knn_predict(TRAIN, TRAIN_LABELS, QUERIES, num_classes=2, k=4, temperature=0.5)
    torch.testing.assert_close(clipped, full)


def _blobs(n: int, num_classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    feats = 5.0 * torch.eye(dim)[labels] + torch.randn(n, dim, generator=g)
    return feats, labels


def test_separable_classes_are_recovered() -> None:
    train, train_labels = _blobs(400, 4, 16, seed=0)
    test, test_labels = _blobs(200, 4, 16, seed=1)
    acc = knn_accuracy(train, train_labels, test, test_labels, num_classes=4, ks=(1, 20, 100))
    assert set(acc) == {1, 20, 100}
    assert all(v >= 99.0 for v in acc.values()), acc


def test_shuffled_labels_give_chance() -> None:
    train, train_labels = _blobs(800, 4, 16, seed=0)
    test, test_labels = _blobs(400, 4, 16, seed=1)
    shuffled = train_labels[torch.randperm(800, generator=torch.Generator().manual_seed(2))]
    acc = knn_accuracy(train, shuffled, test, test_labels, num_classes=4, ks=(20,))
    assert abs(acc[20] - 25.0) <= 8.0, acc


def test_accuracy_matches_predict_and_is_chunk_invariant() -> None:
    train, train_labels = _blobs(120, 3, 8, seed=3)
    train = train + 2.0 * torch.randn(train.shape, generator=torch.Generator().manual_seed(4))  # overlap
    test, test_labels = _blobs(50, 3, 8, seed=5)
    acc = knn_accuracy(train, train_labels, test, test_labels, 3, ks=(5, 20, 20), chunk_size=7)
    assert set(acc) == {5, 20}
    for k in (5, 20):
        big = weighted_knn_predict(train, train_labels, test, 3, k=k, chunk_size=1024)
        small = weighted_knn_predict(train, train_labels, test, 3, k=k, chunk_size=7)
        torch.testing.assert_close(big, small)
        expected = 100.0 * (big.argmax(1) == test_labels).float().mean().item()
        assert acc[k] == pytest.approx(expected)


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="dims differ"):
        weighted_knn_predict(TRAIN, TRAIN_LABELS, torch.zeros(1, 3), 2)
    with pytest.raises(ValueError, match="train_labels must lie"):
        weighted_knn_predict(TRAIN, torch.tensor([0, 1, 2, 0]), QUERIES, 2)
    with pytest.raises(ValueError, match="empty train set"):
        weighted_knn_predict(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), QUERIES, 2)
    with pytest.raises(ValueError, match="k must be"):
        weighted_knn_predict(TRAIN, TRAIN_LABELS, QUERIES, 2, k=0)
