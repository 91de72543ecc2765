"""Collectives that also work with no process group (single process, tests, notebooks).

Building blocks call these instead of ``torch.distributed`` directly, so the same code runs on one CPU
process and under DDP / FSDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op without a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over processes in place (no-op without a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` along dim 0 over processes, in rank order (no gradient).

    All processes must pass the same shape (true for per-device batches with ``drop_last``).
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes, out of place, with gradients flowing back to every process.

    The backward pass all-reduces the incoming gradients, so each process receives the gradient of the
    sum of all processes' losses with respect to its own input (what global batch statistics need).
    Returns ``tensor`` itself with no process group.
    """
    if not is_distributed():
        return tensor
    # The functional collective: differentiable (its backward all-reduces the gradients), out of place.
    import torch.distributed._functional_collectives as funcol

    group = dist.group.WORLD
    assert group is not None  # the default group exists: is_distributed() said so
    return funcol.all_reduce(tensor, "sum", group)


@torch.no_grad()
def mean_over_processes(values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each 0-d tensor of ``values`` averaged over processes, with one all-reduce for all of them.

    For logging per-step metrics of the global batch: the collective runs on the device, so the host
    does not wait for it. Detached float32 results; the values themselves with no process group.
    """
    stacked = torch.stack([value.detach().float() for value in values])
    return list(all_reduce_mean(stacked).unbind())
