"""Linear evaluation as a grid: many learning rates x feature choices, all heads trained in one pass.

The linear protocol of DINO (Caron et al., 2021, arXiv:2104.14294): a linear classifier on frozen
features -- the CLS token of the last block or the concatenated CLS tokens of the last 4 blocks,
optionally with the average-pooled patch tokens of the last block appended -- trained with SGD
(momentum 0.9, no weight decay) and a cosine learning rate; lr is given per 256 samples and scaled with
the batch size. As in DINOv2 (Oquab et al., 2024, arXiv:2304.07193) every (lr, feature) pair gets its
own head, all heads see the same batches, the best one is chosen on a split held out from the training
set, and the test accuracy of that head is the reported figure.

Features are computed **once, without augmentation** (see :mod:`sslvit.eval.features`), rather than
per epoch on augmented crops as in the papers: on a CPU this makes a 10-epoch grid over 10k images a
matter of seconds after one feature pass. It may read slightly lower than the augmented protocol.
``python eval.py eval=linear`` runs :func:`linear_evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from sslvit.eval.features import extract_backbone_features, feature_slices, select
from sslvit.eval.inputs import EvalInputs
from sslvit.utils.atomic_write import atomic_write_json

POOLS = ("cls", "cls_avgpool")


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def _bank_logits(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(L, d, C) weights, (L, C) biases, (B, d) features -> (L, B, C) logits of every head."""
    return torch.einsum("bd,ldc->lbc", x, weight) + bias[:, None]


@dataclass
class _Bank:
    """The heads of one feature view: one (L, d, C) weight and (L, C) bias for L learning rates."""

    blocks: int
    pool: str
    cols: list[slice]
    params: list[torch.Tensor]
    momentum: list[torch.Tensor] = field(default_factory=list)


@torch.no_grad()
def _sgd_step(
    bank: _Bank,
    grads: Sequence[torch.Tensor],
    lrs: torch.Tensor,
    momentum: float,
    weight_decay: float,
) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov) with one learning rate per head."""
    if not bank.momentum:
        bank.momentum = [torch.zeros_like(p) for p in bank.params]
    for param, grad, buf in zip(bank.params, grads, bank.momentum, strict=True):
        buf.mul_(momentum).add_(grad + weight_decay * param)
        param.sub_(lrs.view(-1, *[1] * (param.ndim - 1)) * buf)


def train_linear_grid(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    embed_dim: int,
    stored_blocks: int,
    lrs: Sequence[float],
    blocks: Sequence[int] = (1, 4),
    pools: Sequence[str] = POOLS,
    epochs: int = 10,
    batch_size: int = 256,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Train one linear head per (lr, blocks, pool) on frozen features; pick the best on held-out data.

    Args:
        train_features, test_features: ``(n, (stored_blocks + 1) * D)`` rows from
            :func:`~sslvit.eval.features.extract_backbone_features`.
        train_labels, test_labels: ``(n,)`` int64 class ids.
        num_classes: number of classes C.
        embed_dim: token width D.
        stored_blocks: number of final blocks whose CLS the rows hold.
        lrs: base learning rates (per 256 samples; scaled by ``batch_size / 256``).
        blocks: last-block counts to try; a count above ``stored_blocks`` is clipped to it.
        pools: ``cls`` and / or ``cls_avgpool``.
        epochs, batch_size, momentum, weight_decay: SGD schedule (cosine lr to 0 over all steps).
        val_fraction: share of the training rows held out to choose the best head.
        seed: seeds the held-out split, the head init and the batch order.
        device: where the heads train.

    Returns:
        ``{"best": {...}, "grid": [{"lr", "blocks", "pool", "val_top1", "test_top1"}, ...], ...}``
        with accuracies in percent; ``best`` is the head with the highest held-out accuracy (the first
        one in grid order on ties) and carries its test accuracy.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1); got {val_fraction}")
    unknown = sorted(set(pools) - set(POOLS))
    if unknown or not pools or not lrs or not blocks or epochs < 1 or batch_size < 1:
        raise ValueError(
            f"need non-empty lrs / blocks / pools (pools from {POOLS}), epochs and batch_size >= 1; got "
            f"lrs={list(lrs)}, blocks={list(blocks)}, pools={list(pools)}, epochs={epochs}, "
            f"batch_size={batch_size}"
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(train_features.shape[0], generator=generator)
    n_val = max(1, round(val_fraction * train_features.shape[0]))
    if n_val >= train_features.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training rows leave none after holding out {n_val}")
    val_idx, fit_idx = order[:n_val], order[n_val:]
    x_fit, y_fit = train_features[fit_idx].to(device), train_labels[fit_idx].to(device)
    x_val, y_val = train_features[val_idx].to(device), train_labels[val_idx].to(device)
    x_test, y_test = test_features.to(device), test_labels.to(device)

    # One feature view per (blocks, pool); each view holds a bank of heads, one per learning rate, stored
    # as one (L, d, C) weight so that a batch costs one batched matmul per view, not one per head.
    views = sorted({(min(int(b), stored_blocks), str(p)) for b in blocks for p in pools})
    lr_vec = torch.tensor([float(lr) * batch_size / 256 for lr in lrs], device=device)
    torch.manual_seed(seed)
    banks: list[_Bank] = []
    for n_blocks, pool in views:
        cols = feature_slices(embed_dim, stored_blocks, n_blocks, pool == "cls_avgpool")
        width = sum(c.stop - c.start for c in cols)
        weight = (torch.randn(len(lrs), width, num_classes) * 0.01).to(device)  # DINO's linear-eval init
        weight.requires_grad_(True)
        bias = torch.zeros(len(lrs), num_classes, device=device, requires_grad=True)
        banks.append(_Bank(n_blocks, pool, cols, [weight, bias]))
    steps_per_epoch = math.ceil(x_fit.shape[0] / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        perm = torch.randperm(x_fit.shape[0], generator=generator).to(device)
        for start in range(0, x_fit.shape[0], batch_size):
            idx = perm[start : start + batch_size]
            x, y = x_fit[idx], y_fit[idx]
            cosine = 0.5 * (1.0 + math.cos(math.pi * step / total))
            for bank in banks:
                weight, bias = bank.params
                logits = _bank_logits(weight, bias, select(x, bank.cols))  # (L, B, C)
                # Heads share no parameters: the summed loss gives each head its own gradient.
                loss = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(lrs)), reduction="sum") / len(y)
                grads = torch.autograd.grad(loss, [weight, bias])
                _sgd_step(bank, grads, lr_vec * cosine, momentum, weight_decay)
            step += 1

    grid: list[dict[str, Any]] = []
    for bank in banks:
        weight, bias = (p.detach() for p in bank.params)
        val_logits = _bank_logits(weight, bias, select(x_val, bank.cols))
        test_logits = _bank_logits(weight, bias, select(x_test, bank.cols))
        for i, lr in enumerate(lrs):
            grid.append(
                {
                    "lr": float(lr),
                    "blocks": bank.blocks,
                    "pool": bank.pool,
                    "val_top1": _accuracy(val_logits[i], y_val),
                    "test_top1": _accuracy(test_logits[i], y_test),
                }
            )
    best = max(grid, key=lambda row: row["val_top1"])  # max() keeps the first of equal rows
    return {
        "best": best,
        "grid": grid,
        "num_fit": int(fit_idx.numel()),
        "num_heldout": int(n_val),
        "num_test": int(test_features.shape[0]),
        "epochs": epochs,
        "batch_size": batch_size,
    }


def format_grid(result: dict[str, Any]) -> str:
    """The grid as a text table (one line per head, best marked with ``*``)."""
    lines = [f"{'lr':>9} {'blocks':>6} {'pool':>12} {'val_top1':>9} {'test_top1':>9}"]
    for row in result["grid"]:
        mark = " *" if row is result["best"] else ""
        lines.append(
            f"{row['lr']:>9.2g} {row['blocks']:>6} {row['pool']:>12} "
            f"{row['val_top1']:>9.2f} {row['test_top1']:>9.2f}{mark}"
        )
    return "\n".join(lines)


def linear_evaluation(
    inputs: EvalInputs,
    lrs: Sequence[float],
    blocks: Sequence[int],
    pools: Sequence[str],
    epochs: int,
    batch_size: int,
    momentum: float,
    weight_decay: float,
    val_fraction: float,
) -> dict[str, Any]:
    """``eval=linear``: the grid of :func:`train_linear_grid` on features extracted once; the whole grid
    goes to ``linear_grid.json`` in the output folder. Arguments as in :func:`train_linear_grid`."""
    datamodule = inputs.datamodule()
    backbone: Any = inputs.backbone.to(inputs.device)
    device = inputs.device
    stored = min(max(int(b) for b in blocks), len(backbone.blocks))
    train_x, train_y = extract_backbone_features(
        backbone, datamodule.eval_dataloader("train"), stored, device
    )
    test_x, test_y = extract_backbone_features(backbone, datamodule.eval_dataloader("val"), stored, device)
    result = train_linear_grid(
        train_x, train_y, test_x, test_y, datamodule.num_classes, int(backbone.embed_dim), stored,
        lrs=list(lrs), blocks=list(blocks), pools=list(pools), epochs=epochs, batch_size=batch_size,
        momentum=momentum, weight_decay=weight_decay, val_fraction=val_fraction, seed=inputs.seed,
        device=device,
    )  # fmt: skip
    print(format_grid(result))
    grid_file = "linear_grid.json"
    atomic_write_json(result, inputs.output_dir / grid_file)
    best = result["best"]
    metrics = {"linear_best_val_top1": best["val_top1"], "linear_best_test_top1": best["test_top1"]}
    return {"metrics": metrics, "best": best, "grid_file": grid_file}
