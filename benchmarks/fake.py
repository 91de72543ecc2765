"""Turn a built method and its batch into fake tensors (shapes, dtypes and a device; no data, no GPU).

``torch._subclasses.FakeTensorMode`` runs every op for its metadata only, so a step at the protocol's
batch size costs no memory here, and a fake tensor may claim to live on a CUDA device that this machine
does not have. Used by ``benchmarks.memory`` (fake CPU tensors) and ``benchmarks.sync_audit`` (fake
CUDA tensors).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

BatchT = TypeVar("BatchT")


def fake_copy(mode: FakeTensorMode, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A fake tensor with ``tensor``'s shape, dtype and strides, on ``device``."""
    with mode:
        return mode.from_tensor(tensor.detach()).to(device)


def make_module_fake(module: nn.Module, mode: FakeTensorMode, device: torch.device) -> None:
    """Replace every parameter and buffer of ``module`` (built for real, e.g. by timm's init, which
    reads values) by a fake one on ``device``, in place; parameters stay parameters."""
    with torch.no_grad():
        for sub in module.modules():
            for name, value in [*sub._parameters.items(), *sub._buffers.items()]:
                if value is None:
                    continue
                faked = fake_copy(mode, value, device)
                if isinstance(value, nn.Parameter):
                    faked = nn.Parameter(faked, requires_grad=value.requires_grad)
                setattr(sub, name, faked)


def fake_batch(batch: BatchT, mode: FakeTensorMode, device: torch.device) -> BatchT:
    """The batch dataclass with every tensor (and every tensor of a list field) made fake on ``device``."""

    def convert(value: Any) -> Any:
        if isinstance(value, list):
            return [convert(v) for v in value]
        return fake_copy(mode, value, device) if isinstance(value, torch.Tensor) else value

    fields = dataclasses.fields(batch)  # type: ignore[arg-type]
    return dataclasses.replace(batch, **{f.name: convert(getattr(batch, f.name)) for f in fields})  # type: ignore[type-var]
