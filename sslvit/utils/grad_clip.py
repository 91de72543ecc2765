"""Gradient-norm clipping per group of parameters, on the device, also for sharded (FSDP) gradients.

The official codes clip differently: BEiT the norm of all gradients together, DINO and iBOT every
parameter's gradient on its own (``utils.clip_gradients``), DINOv2 each student network (backbone, DINO
head, iBOT head) on its own. One routine covers the three: each group's gradients are scaled by
``min(1, max_norm / (norm + 1e-6))``, with no host read of the norms (the host never waits for the step).

Under FSDP every rank holds a shard of every gradient, so a group's norm is the square root of the sum,
over ranks, of the shards' squared norms: one all-reduce of a vector with one entry per group. (Lightning's
own norm clipping refuses FSDP, whose root module would have to clip.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.linalg import vector_norm

CLIP_MODES = ("global", "per_network", "per_parameter")
_EPS = 1e-6  # as the official codes (and torch's clip_grad_norm_)


class GroupNorms(NamedTuple):
    """The gradient norms of the groups that had gradients, and those groups' positions in the input."""

    norms: Tensor
    indices: list[int]


def clip_groups(
    groups: Sequence[Sequence[nn.Parameter]], max_norm: float, sharded: bool = False
) -> Tensor | None:
    """Scale each group's gradients so that their joint L2 norm is at most ``max_norm``.

    Args:
        groups: the parameters of each group; parameters without a gradient are left out.
        max_norm: the largest norm a group keeps.
        sharded: the gradients are shards (FSDP): sum the squared norms over the default process group.

    Returns:
        The groups' norms before clipping (a device tensor, one entry per group with gradients), or None
        when no parameter has a gradient.
    """
    measured = measure_and_clip(groups, max_norm, sharded)
    return None if measured is None else measured.norms


def measure_and_clip(
    groups: Sequence[Sequence[nn.Parameter]], max_norm: float, sharded: bool = False
) -> GroupNorms | None:
    """:func:`clip_groups` that also says which groups its norms belong to; ``max_norm <= 0`` only
    measures (a step needs the norms to tell whether its gradients are finite, clipped or not)."""
    grads = [[p.grad for p in group if p.grad is not None] for group in groups]
    indices = list(range(len(grads)))
    if not sharded:  # the ranks' vectors of norms need not line up: groups without gradients go
        indices = [i for i in indices if grads[i]]
        grads = [grads[i] for i in indices]
    flat = [g for group in grads for g in group]
    if not flat:
        return None
    sizes = [len(group) for group in grads]
    one_each = all(size == 1 for size in sizes)  # per_parameter: no per-group sums (hundreds of kernels)
    norms = torch.stack(torch._foreach_norm(flat)).float()
    if sharded and dist.is_available() and dist.is_initialized():
        squares = norms.square() if one_each else torch.stack([p.square().sum() for p in norms.split(sizes)])
        dist.all_reduce(squares)  # every rank then clips its shards with the same factors
        group_norms = squares.sqrt()
    else:  # the norm of the norms, as torch's clip_grad_norm_ (one group: the same factor, bit for bit)
        group_norms = norms if one_each else torch.stack([vector_norm(part) for part in norms.split(sizes)])
    if max_norm > 0:
        factors = (max_norm / (group_norms + _EPS)).clamp(max=1.0)
        if one_each:
            torch._foreach_mul_(flat, list(factors.unbind()))
        else:
            for group, factor in zip(grads, factors.unbind(), strict=True):
                if group:
                    torch._foreach_mul_(group, factor)
    return GroupNorms(group_norms, indices)


def clipping_groups(
    networks: dict[str, nn.Module], mode: str, order: Sequence[nn.Parameter] | None = None
) -> list[list[nn.Parameter]]:
    """The groups that ``mode`` clips on their own: one of all parameters (``global``), one per network
    (``per_network``) or one per parameter (``per_parameter``); frozen parameters are left out.

    ``order``: the parameters in the order a group sums its gradients' norms (the optimizer's, as
    Lightning's own clipping; the sum's rounding depends on it), else the networks' order.
    """
    return list(named_clipping_groups(networks, mode, order).values())


def named_clipping_groups(
    networks: dict[str, nn.Module], mode: str, order: Sequence[nn.Parameter] | None = None
) -> dict[str, list[nn.Parameter]]:
    """:func:`clipping_groups` by name, for messages: ``all`` (global), the network's name
    (per_network) or ``<network>.<parameter>`` (per_parameter)."""
    if mode not in CLIP_MODES:
        raise ValueError(f"clip_grad_mode must be one of {CLIP_MODES}, got {mode!r}")
    position = {id(p): i for i, p in enumerate(order or ())}

    def in_order(params: list[nn.Parameter]) -> list[nn.Parameter]:  # stable: unchanged without an order
        return sorted(params, key=lambda p: position.get(id(p), len(position)))

    per_network = {
        net_name: in_order([p for p in net.parameters() if p.requires_grad])
        for net_name, net in networks.items()
    }
    if mode == "per_network":
        return {net_name: group for net_name, group in per_network.items() if group}
    flat = in_order([p for group in per_network.values() for p in group])
    if mode == "global":
        return {"all": flat} if flat else {}
    names = {
        id(p): f"{net_name}.{param_name}"
        for net_name, net in networks.items()
        for param_name, p in net.named_parameters()
    }
    return {names[id(p)]: [p] for p in flat}
