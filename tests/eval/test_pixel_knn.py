"""The raw-pixel k-NN floor against an independent numpy computation, streamed and sharded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from sslvit.eval.knn import knn_accuracy
from sslvit.eval.neighbours import NearestNeighbours
from sslvit.eval.pixel_knn import PixelMemoryError, own_batches, pixel_knn_accuracy

MEAN, STD = (0.2, 0.5, 0.4), (0.3, 0.25, 0.5)
CLASSES = 3


def raw_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 4, 4) pixels in [0, 1] on a 1/255 grid (as ToTensor gives them) and labels in [0, 3)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 4, 4)) / 255.0, rng.integers(0, CLASSES, n)


def loader(pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> DataLoader:
    """What eval_dataloader yields: normalised images, labels, dataset indices."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (MEAN, STD))
    images = (torch.tensor(pixels, dtype=torch.float32) - mean) / std
    dataset = TensorDataset(images, torch.tensor(labels), torch.arange(len(labels)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def numpy_knn(bank, bank_labels, queries, query_labels, k, temperature, center=False) -> float:
    """Top-1 % of the DINO weighted k-NN, written out in numpy: cosine, top k, sum of exp(sim / T)."""
    bank, queries = bank.reshape(len(bank), -1), queries.reshape(len(queries), -1)
    if center:
        mean = bank.mean(0)
        bank, queries = bank - mean, queries - mean
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = queries @ bank.T
    correct = 0
    for row, target in zip(sims, query_labels):
        top = np.argsort(-row)[:k]
        scores = np.zeros(CLASSES)
        np.add.at(scores, bank_labels[top], np.exp(row[top] / temperature))
        correct += int(scores.argmax() == target)
    return 100.0 * correct / len(query_labels)


@pytest.mark.parametrize(("k", "batch_size"), [(5, 4), (20, 7), (50, 64)])
def test_pixel_knn_equals_numpy(k: int, batch_size: int) -> None:
    bank, bank_labels = raw_images(40, seed=0)
    queries, query_labels = raw_images(25, seed=1)
    # Bank batches smaller than k: the running top-k merges across batches; k=50 is clipped to 40.
    result = pixel_knn_accuracy(
        loader(bank, bank_labels, batch_size),
        loader(queries, query_labels, 8),
        CLASSES,
        ks=(k,),
        temperature=0.1,
        chunk_size=6,
        normalization=(MEAN, STD),
    )
    for name, center in (("pixels", False), ("pixels_centered", True)):
        expected = numpy_knn(bank, bank_labels, queries, query_labels, min(k, 40), 0.1, center=center)
        assert result[name][k] == pytest.approx(expected), name
    if k == 20:  # on this data the two forms differ (28 vs 36), so the centring is not a no-op
        assert result["pixels"][k] == pytest.approx(28.0) and result["pixels_centered"][k] == pytest.approx(
            36.0
        )


def test_normalised_form_without_normalization_and_inferred_classes() -> None:
    bank, bank_labels = raw_images(30, seed=2)
    queries, query_labels = raw_images(12, seed=3)
    bank_loader, query_loader = loader(bank, bank_labels, 8), loader(queries, query_labels, 8)
    result = pixel_knn_accuracy(bank_loader, query_loader, None, ks=(10,), centered=False)
    assert set(result) == {"pixels"}
    bank_x = torch.cat([b[0] for b in bank_loader]).flatten(1)
    query_x = torch.cat([b[0] for b in query_loader]).flatten(1)
    expected = knn_accuracy(
        bank_x, torch.tensor(bank_labels), query_x, torch.tensor(query_labels), CLASSES, (10,)
    )
    assert result["pixels"][10] == pytest.approx(expected[10])


def test_unlabelled_rows_neither_vote_nor_count() -> None:
    bank, bank_labels = raw_images(30, seed=4)
    queries, query_labels = raw_images(12, seed=5)
    bank_labels[::3], query_labels[::4] = -1, -1
    result = pixel_knn_accuracy(
        loader(bank, bank_labels, 8),
        loader(queries, query_labels, 5),
        CLASSES,
        ks=(7,),
        normalization=(MEAN, STD),
    )
    keep_b, keep_q = bank_labels >= 0, query_labels >= 0
    for name, center in (("pixels", False), ("pixels_centered", True)):
        expected = numpy_knn(
            bank[keep_b], bank_labels[keep_b], queries[keep_q], query_labels[keep_q], 7, 0.07, center
        )
        assert result[name][7] == pytest.approx(expected)


def test_distributed_sampler_padding_is_dropped_and_shards_merge_to_the_whole() -> None:
    bank, bank_labels = raw_images(7, seed=6)
    queries, _ = raw_images(5, seed=7)
    dataset = loader(bank, bank_labels, 7).dataset
    shards = []
    for rank in range(2):  # 7 samples on 2 ranks: rank 1 gets positions 1, 3, 5 and the repeat of 0
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        rows = list(own_batches(DataLoader(dataset, batch_size=3, sampler=sampler)))
        shards.append((torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])))
    assert [len(s[1]) for s in shards] == [4, 3]
    torch.testing.assert_close(shards[1][0], dataset.tensors[0][[1, 3, 5]])
    # Each rank's top-k, merged, equals the top-k over the whole bank.
    query_x = torch.tensor(queries, dtype=torch.float32).flatten(1)
    parts = [NearestNeighbours(query_x, 4) for _ in shards]
    for part, (images, labels) in zip(parts, shards):
        part.add(images.flatten(1), labels)
    whole = NearestNeighbours(query_x, 4)
    whole.add(dataset.tensors[0].flatten(1), dataset.tensors[1])
    parts[0].merge(torch.cat([p.sims for p in parts], 1), torch.cat([p.labels for p in parts], 1))
    torch.testing.assert_close(parts[0].sims, whole.sims)
    assert torch.equal(parts[0].labels, whole.labels)


def test_query_pixels_over_the_memory_limit_are_refused() -> None:
    bank, bank_labels = raw_images(10, seed=8)
    with pytest.raises(PixelMemoryError, match="max_query_gb"):
        # 10 queries x 48 pixels x 4 bytes = 1920 bytes > 1e-6 GiB
        pixel_knn_accuracy(
            loader(bank, bank_labels, 4), loader(bank, bank_labels, 4), CLASSES, max_query_gb=1e-6
        )


class PrecisionSpy:
    """An evaluation loader that records the float32 matmul precision whenever it is iterated."""

    def __init__(self, batches: DataLoader, seen: list[str]) -> None:
        self.batches, self.seen = batches, seen

    def __iter__(self):
        self.seen.append(torch.get_float32_matmul_precision())
        return iter(self.batches)


def test_full_float32_inside_and_the_setting_restored_after() -> None:
    bank, bank_labels = raw_images(6, seed=9)
    seen: list[str] = []
    spies = [PrecisionSpy(loader(bank, bank_labels, 3), seen) for _ in range(2)]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on a GPU: not for the pixel reference
    try:
        pixel_knn_accuracy(*spies, CLASSES, ks=(2,), centered=False)
        assert seen == ["highest", "highest"] and torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(previous)
