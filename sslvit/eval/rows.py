"""One row per evaluation sample, gathered from every rank: the shared core of every feature pass.

Evaluation loaders yield ``(images, labels, indices)``; under DDP they are sharded by a
``DistributedSampler(shuffle=False)`` that pads the last shard with repeated samples, so the gathered
rows are de-duplicated and put back in dataset order through ``indices``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist

from sslvit.utils.distributed import is_distributed


def unpack_eval_batch(batch: Any, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, labels, indices)`` of an evaluation batch; without indices (one process only) rows are
    numbered from ``offset`` in loader order."""
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise TypeError(f"evaluation batches must be (images, labels[, indices]); got {type(batch).__name__}")
    images, labels = batch[0], batch[1]
    if len(batch) == 3:
        indices = batch[2]
    elif is_distributed():
        raise ValueError("evaluation batches must carry indices under DDP to undo DistributedSampler padding")
    else:  # single process, sequential loader: positions are the indices
        indices = torch.arange(offset, offset + images.shape[0])
    return images, torch.as_tensor(labels), torch.as_tensor(indices)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over ranks along dim 0, allowing a different row count per rank."""
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))  # all_gather needs equal shapes
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)], dim=0)


@torch.no_grad()
def collect_rows(
    encode: Callable[[torch.Tensor], torch.Tensor], loader: Iterable[Any], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode(images)`` over ``loader``, rows and labels collected from all ranks.

    Args:
        encode: ``images (B,C,H,W) on device -> (B, D)`` (a network's features, or flattened pixels).
        loader: yields ``(images, labels (B,), indices (B,))``; ``indices`` may be omitted without a
            process group (rows are then numbered in loader order).
        device: where the images go and the rows stay.

    Returns:
        ``rows (n, D) float32`` and ``labels (n,) int64`` on ``device``, one row per dataset index, sorted
        by index, identical on every rank.
    """
    rows, labels, indices = [], [], []
    seen = 0
    for batch in loader:
        images, batch_labels, batch_indices = unpack_eval_batch(batch, seen)
        seen += images.shape[0]
        rows.append(encode(images.to(device, non_blocking=True)).float())
        # Labels and indices stay on the host until the end: a blocking copy per batch would make
        # the host wait for each batch's forward pass before queueing the next one.
        labels.append(batch_labels.to(dtype=torch.int64))
        indices.append(batch_indices.to(dtype=torch.int64))
    if not rows:
        raise ValueError("evaluation loader yielded no batches")
    out = torch.cat(rows)
    all_labels, all_indices = torch.cat(labels).to(device), torch.cat(indices).to(device)
    if is_distributed():
        out, all_labels, all_indices = (gather_rows(t) for t in (out, all_labels, all_indices))
    # Padding repeats samples: keep one row per index (duplicates hold the same sample), in index order.
    unique, inverse = torch.unique(all_indices, sorted=True, return_inverse=True)
    out_rows = out.new_empty((unique.shape[0], out.shape[1]))
    out_labels = all_labels.new_empty(unique.shape[0])
    out_rows[inverse] = out
    out_labels[inverse] = all_labels
    return out_rows, out_labels
