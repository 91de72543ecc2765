"""Extract evaluation features from a LightningModule over an evaluation loader, across ranks.

Evaluation loaders yield ``(images, labels, indices)``; under DDP they are sharded by a
``DistributedSampler(shuffle=False)`` that pads the last shard with repeated samples, so the gathered
rows are de-duplicated and put back in dataset order through ``indices``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist

from sslvit.utils.distributed import is_distributed


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and afterwards restore each submodule's own flag.

    A plain ``module.train()`` afterwards would also switch the EMA teacher (kept in eval mode on purpose,
    no dropout / drop path) to training mode, so every submodule's flag is recorded and written back.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in modes:
            m.training = flag


def _unpack(batch: Any, offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _gather_rows(tensor: torch.Tensor) -> torch.Tensor:
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
def extract_features(
    pl_module: pl.LightningModule, loader: Iterable[Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``pl_module(images)`` over ``loader`` and collect features and labels from all ranks.

    Args:
        pl_module: module whose ``forward(images) -> (B, D)`` gives evaluation features.
        loader: yields ``(images (B,C,H,W), labels (B,), indices (B,))``; ``indices`` may be omitted
            without a process group (rows are then numbered in loader order).

    Returns:
        ``features (n, D) float32`` and ``labels (n,) int64`` on ``pl_module.device``, one row per dataset
        index, sorted by index, identical on every rank.
    """
    device = pl_module.device
    trainer = getattr(pl_module, "_trainer", None)  # None when used offline, outside a Trainer
    # Same autocast as validation steps (e.g. bf16-mixed); features are cast back to float32 below.
    precision = (
        trainer.precision_plugin.val_step_context() if trainer is not None else contextlib.nullcontext()
    )
    feats, labels, indices = [], [], []
    seen = 0
    with eval_mode(pl_module), precision:
        for batch in loader:
            images, batch_labels, batch_indices = _unpack(batch, seen)
            seen += images.shape[0]
            out = pl_module(images.to(device, non_blocking=True))
            feats.append(out.float())
            # Labels and indices stay on the host until the end: a blocking copy per batch would make
            # the host wait for each batch's forward pass before queueing the next one.
            labels.append(batch_labels.to(dtype=torch.int64))
            indices.append(batch_indices.to(dtype=torch.int64))
    if not feats:
        raise ValueError("evaluation loader yielded no batches")
    features = torch.cat(feats)
    all_labels, all_indices = torch.cat(labels).to(device), torch.cat(indices).to(device)
    if is_distributed():
        features, all_labels, all_indices = (_gather_rows(t) for t in (features, all_labels, all_indices))
    # Padding repeats samples: keep one row per index (duplicates hold the same sample), in index order.
    unique, inverse = torch.unique(all_indices, sorted=True, return_inverse=True)
    out_feats = features.new_empty((unique.shape[0], features.shape[1]))
    out_labels = all_labels.new_empty(unique.shape[0])
    out_feats[inverse] = features
    out_labels[inverse] = all_labels
    return out_feats, out_labels
