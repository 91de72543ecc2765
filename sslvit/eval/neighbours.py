"""The neighbour search and the vote of the weighted k-NN classifier (DINO protocol).

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021 (arXiv:2104.14294),
following Wu et al., CVPR 2018: cosine similarity of l2-normalised rows, each of the k nearest bank rows
votes for its class with weight exp(similarity / T). Shared by the k-NN of features
(:mod:`sslvit.eval.knn`) and of raw pixels (:mod:`sslvit.eval.pixel_knn`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def vote(
    top_sims: torch.Tensor, top_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Sum the exp(sim / T) weights of the neighbours per class: (c, k) -> class scores (c, C)."""
    weights = (top_sims / temperature).exp()
    scores = torch.zeros(top_sims.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, top_labels, weights)


class NearestNeighbours:
    """The ``k`` most cosine-similar bank rows of every query, built up one bank batch at a time.

    Streaming the bank bounds memory by the queries, one bank batch and a (chunk_size, batch) similarity
    block, whatever the bank's size (the raw-pixel k-NN of large images); one batch holding the whole
    bank is the plain k-NN. Every batch keeps its own top ``k`` and merges them with the running ones,
    so the result is the top ``k`` over the whole bank (up to the order of exact ties).

    Args:
        queries: (n_test, D) features to classify (need not be normalised).
        k: neighbours kept per query.
        chunk_size: query rows per similarity block.
        device: where the similarities are computed (default: the queries' device).
    """

    def __init__(
        self, queries: torch.Tensor, k: int, chunk_size: int = 1024, device: torch.device | str | None = None
    ) -> None:
        if k < 1 or chunk_size < 1:
            raise ValueError(f"k and chunk_size must be >= 1; got k={k}, chunk_size={chunk_size}")
        self.queries = F.normalize(queries.float(), dim=1).to(device or queries.device)
        self.k, self.chunk_size, self.count = int(k), int(chunk_size), 0
        n, dev = self.queries.shape[0], self.queries.device
        # -inf similarity: an empty slot, sorted last and never chosen over a real neighbour.
        self.sims = torch.full((n, self.k), float("-inf"), device=dev)  # (n_test, k) sorted descending
        self.labels = torch.zeros((n, self.k), dtype=torch.int64, device=dev)

    def add(self, bank: torch.Tensor, labels: torch.Tensor) -> None:
        """Let the rows of ``bank (b, D)`` with class ids ``labels (b,)`` compete for the neighbour slots."""
        if bank.shape[0] == 0:
            return
        bank = F.normalize(bank.float().to(self.queries.device), dim=1)
        labels = labels.to(self.queries.device)
        keep = min(self.k, bank.shape[0])
        for start in range(0, self.queries.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            top_sims, top_idx = (self.queries[rows] @ bank.T).topk(keep, dim=1)  # (c, b) -> (c, keep)
            self.merge(
                torch.cat([self.sims[rows], top_sims], 1),
                torch.cat([self.labels[rows], labels[top_idx]], 1),
                rows,
            )
        self.count += bank.shape[0]

    def merge(self, sims: torch.Tensor, labels: torch.Tensor, rows: slice = slice(None)) -> None:
        """Keep the top ``k`` of candidate ``sims (c, m)`` / ``labels (c, m)`` (m >= k) for query ``rows``."""
        top_sims, pos = sims.topk(self.k, dim=1, largest=True, sorted=True)
        self.sims[rows], self.labels[rows] = top_sims, labels.gather(1, pos)

    def accuracy(
        self, targets: torch.Tensor, ks: Sequence[int], num_classes: int, temperature: float = 0.07
    ) -> dict[int, float]:
        """Top-1 accuracy (in %) of the weighted vote of the first ``min(k, bank size)`` neighbours."""
        if len(ks) == 0 or min(ks) < 1:
            raise ValueError(f"ks must be a non-empty sequence of positive ints; got {list(ks)}")
        if self.count == 0:
            raise ValueError("k-NN needs at least one training feature; got an empty train set")
        targets = targets.to(self.queries.device)
        out = {}
        for k in dict.fromkeys(ks):  # dict keys: duplicates in ks are evaluated once
            kk = min(k, self.count, self.k)
            scores = vote(self.sims[:, :kk], self.labels[:, :kk], num_classes, temperature)
            out[k] = 100.0 * int((scores.argmax(dim=1) == targets).sum()) / targets.shape[0]
        return out
