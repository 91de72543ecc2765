"""The raw-pixel floor of the k-NN evaluation: the same weighted vote on the flattened evaluation images.

A learned representation is only useful where its k-NN accuracy beats that of the pixels it was computed
from. The pixels are the evaluation transform's output (the resized, centre-cropped image) with its
normalisation undone, i.e. values in [0, 1] as ``ToTensor`` gives them, flattened to ``C*H*W``; the bank
and query subsets, k, T and the vote are those of ``val/knn_top1`` (:class:`~sslvit.eval.neighbours.
NearestNeighbours`). The centred variant first subtracts the per-pixel mean of the bank from every row.

Memory: the query pixels are held (``n_query * C*H*W`` float32, guarded by ``max_query_gb``) and the
bank is streamed batch by batch through a running top-k, so the bank's size does not matter; under DDP
each rank streams its own shard of the bank and the ranks' neighbours are merged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from sslvit.eval.neighbours import NearestNeighbours
from sslvit.eval.rows import collect_rows, unpack_eval_batch
from sslvit.utils.distributed import all_reduce_sum, is_distributed
from sslvit.utils.matmul_precision import full_float32_matmuls


class PixelMemoryError(ValueError):
    """The query pixels would not fit the allowed memory."""


def normalization_of(transform: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel ``(mean, std)`` an evaluation transform normalises with, or None if it says none."""
    mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


class PixelRows:
    """``images (B,C,H,W) -> (B, C*H*W)`` float32 pixels: normalisation undone, optionally centred.

    Args:
        normalization: the ``(mean, std)`` per channel to undo; None keeps the images as they come.
        center: (C*H*W,) values subtracted from every row (the bank's per-pixel mean), or None.
    """

    def __init__(
        self,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        center: torch.Tensor | None = None,
    ) -> None:
        self.normalization = normalization
        self.center = center

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        if self.normalization is not None:
            mean, std = (torch.tensor(v, device=images.device).view(1, -1, 1, 1) for v in self.normalization)
            images = images * std + mean  # (B,C,H,W), back to the [0, 1] values of ToTensor
        rows = images.flatten(1)  # (B, C*H*W)
        return rows if self.center is None else rows - self.center.to(rows.device)


def own_batches(loader: Iterable[Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` of this rank's shard of ``loader``, without the padding of its sampler.

    ``DistributedSampler(shuffle=False)`` gives rank r the samples at positions r, r + W, r + 2W, ... of
    the dataset repeated to a multiple of W; positions past the dataset's end are the repeats. Dropping
    them makes every sample count once over all ranks (the bank's mean and the neighbour merge need it).
    """
    sampler = getattr(loader, "sampler", None)
    sharded = isinstance(sampler, DistributedSampler)
    if sharded and sampler.shuffle:  # type: ignore[union-attr]
        raise ValueError("the raw-pixel k-NN needs an unshuffled DistributedSampler over the bank")
    if is_distributed() and not sharded:
        raise ValueError("under DDP the raw-pixel k-NN needs the bank loader sharded by a DistributedSampler")
    if sharded:
        size = len(sampler.dataset)  # type: ignore[union-attr, arg-type]
        rank, world = sampler.rank, sampler.num_replicas  # type: ignore[union-attr]
    else:
        size, rank, world = -1, 0, 1
    seen = 0
    for batch in loader:
        images, labels, _ = unpack_eval_batch(batch, seen)
        positions = rank + world * torch.arange(seen, seen + images.shape[0])
        seen += images.shape[0]
        if sharded and bool((positions >= size).any()):
            keep = positions < size
            images, labels = images[keep], labels[keep]
        yield images, labels


def _stream_bank(
    neighbours: NearestNeighbours, loader: Iterable[Any], encode: PixelRows, device: torch.device | str
) -> torch.Tensor:
    """Feed this rank's labelled bank rows to ``neighbours``; return their (C*H*W + 1,) float64 sum and
    count (the count in the last slot)."""
    total: torch.Tensor | None = None
    for images, labels in own_batches(loader):
        labelled = labels >= 0  # unlabelled rows can neither vote nor be scored
        rows = encode(images[labelled].to(device, non_blocking=True))
        neighbours.add(rows, labels[labelled].to(torch.int64))
        if total is None:
            total = torch.zeros(rows.shape[1] + 1, dtype=torch.float64, device=rows.device)
        total[:-1] += rows.double().sum(0)
        total[-1] += rows.shape[0]
    if total is None:  # (a rank whose rows are all padding still yields its batch, with no rows)
        raise ValueError("the bank loader yielded no batches")
    return total


def _merge_ranks(neighbours: NearestNeighbours) -> None:
    """Every rank's neighbours -> the top k over the whole bank, the same on every rank."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    sims = [torch.empty_like(neighbours.sims) for _ in range(world)]
    labels = [torch.empty_like(neighbours.labels) for _ in range(world)]
    dist.all_gather(sims, neighbours.sims.contiguous())
    dist.all_gather(labels, neighbours.labels.contiguous())
    neighbours.merge(torch.cat(sims, dim=1), torch.cat(labels, dim=1))
    count = torch.tensor([neighbours.count], dtype=torch.int64, device=neighbours.sims.device)
    neighbours.count = int(all_reduce_sum(count))


def _accuracy(
    neighbours: NearestNeighbours,
    targets: torch.Tensor,
    ks: Sequence[int],
    num_classes: int | None,
    temperature: float,
) -> dict[int, float]:
    if not num_classes:
        num_classes = int(torch.cat([targets, neighbours.labels.flatten()]).max()) + 1
    return neighbours.accuracy(targets, ks, num_classes, temperature)


# Full float32 products: a fixed reference, the same figure on a GPU (where TF32 would round the
# similarities) as on a CPU.
@full_float32_matmuls()
def pixel_knn_accuracy(
    bank_loader: Iterable[Any],
    query_loader: Iterable[Any],
    num_classes: int | None,
    ks: Sequence[int] = (20,),
    temperature: float = 0.07,
    chunk_size: int = 1024,
    device: torch.device | str = "cpu",
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    centered: bool = True,
    max_query_gb: float = 4.0,
) -> dict[str, dict[int, float]]:
    """Weighted k-NN top-1 (in %) on raw pixels, and on bank-mean-centred pixels.

    Args:
        bank_loader, query_loader: evaluation loaders of the bank (train) and query (val) subsets,
            ``(images, labels, indices)`` as :meth:`SSLDataModule.eval_dataloader` yields them.
        num_classes: number of classes; None: one more than the largest label among the queries and
            their neighbours (the only labels that enter a vote, so the result is the same).
        ks, temperature, chunk_size: as in :func:`~sslvit.eval.knn.knn_accuracy`.
        device: where the pixels and similarities live.
        normalization: the eval transform's ``(mean, std)`` (:func:`normalization_of`), undone first;
            None uses the images as they come.
        centered: also report the k-NN of pixels minus the bank's per-pixel mean (a second bank pass).
        max_query_gb: refuse (:class:`PixelMemoryError`) when the query pixels need more memory.

    Returns:
        ``{"pixels": {k: acc}, "pixels_centered": {k: acc}}`` (the second only with ``centered``).
    """
    if len(ks) == 0 or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive ints; got {list(ks)}")
    num_queries = len(getattr(query_loader, "dataset", ()))

    def raw(images: torch.Tensor) -> torch.Tensor:
        need = num_queries * images[0].numel() * 4 / 2**30
        if need > max_query_gb:  # checked on every batch: cheap, and no state to carry
            raise PixelMemoryError(
                f"the raw-pixel k-NN would hold {num_queries} query images x {images[0].numel()} pixels "
                f"= {need:.1f} GiB > {max_query_gb:g} GiB allowed; lower data.eval_val_samples or raise "
                "pixels_max_query_gb"
            )
        return PixelRows(normalization)(images)

    queries, query_labels = collect_rows(raw, query_loader, device)
    labelled = query_labels >= 0
    queries, query_labels = queries[labelled], query_labels[labelled]
    if queries.shape[0] == 0:
        raise ValueError("the raw-pixel k-NN needs at least one labelled query")
    results = {}
    neighbours = NearestNeighbours(queries, max(ks), chunk_size, device=device)
    total = all_reduce_sum(_stream_bank(neighbours, bank_loader, PixelRows(normalization), device))
    _merge_ranks(neighbours)
    results["pixels"] = _accuracy(neighbours, query_labels, ks, num_classes, temperature)
    if centered:
        mean = (total[:-1] / total[-1]).float()  # (C*H*W,) per-pixel mean of the labelled bank
        del neighbours  # its normalised copy of the queries
        neighbours = NearestNeighbours(queries - mean, max(ks), chunk_size, device=device)
        _stream_bank(neighbours, bank_loader, PixelRows(normalization, center=mean), device)
        _merge_ranks(neighbours)
        results["pixels_centered"] = _accuracy(neighbours, query_labels, ks, num_classes, temperature)
    return results
