"""Find where a training step makes the host wait for the GPU, on a machine without one.

    python -m benchmarks.sync_audit --method dinov2 --arch vit_small            # one configuration
    python -m benchmarks.sync_audit --method dino --pack-crops --override backbone.drop_path_rate=0.3

On a GPU the host waits for the device whenever Python needs a value or a size that only the device
knows (``.item()``, ``bool(t)``, ``nonzero``, boolean-mask indexing, ``unique``, ...) and whenever it
copies between host and device without ``non_blocking`` (``torch.tensor(x, device="cuda")``,
``t.new_tensor(...)``, ``.to("cuda")`` of a host tensor, ``.cpu()``). Each wait drains the queue of
kernels that lets the GPU run ahead of Python. :class:`SyncWatch` records these ops with the line of
our code that called them. ``audit`` builds the method and the protocol batch as ``benchmarks.step``
does, makes them fake tensors on a CUDA device (``FakeTensorMode`` needs no GPU for that) and watches
the step: schedules, zero_grad, ``training_step`` (teacher and student, heads, losses, centre updates),
the last-layer freeze and gradient clipping (on zero gradients), the EMA update after AdamW, and
what the step's ``self.log`` calls make of their values (Lightning's own conversion).

Not watched here: the backward pass (autograd's engine needs a real device for CUDA tensors; its
formulas are torch's own except our autograd Functions, which ``tests/methods/test_no_host_sync.py``
watches on the CPU) and AdamW's own step (fused, it runs on the device).
"""

from __future__ import annotations

import argparse
import logging
import numbers
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.device_dtype_mixin import _DeviceDtypeModuleMixin as DeviceDtypeModuleMixin
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.build import (
    RunSpec,
    add_run_arguments,
    build_method,
    compose_cfg,
    spec_from_arguments,
    synthetic_batch,
)
from benchmarks.fake import fake_batch, make_module_fake
from benchmarks.timing import attach_trainer, set_global_step
from sslvit.train import quiet_known_warnings

# Ops whose output value or size the host must read from the device before Python can go on.
READS = {
    "aten::_local_scalar_dense",  # .item(), float(t), bool(t), int(t)
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::bincount",  # sizes its output by the input's max, read back even with minlength
}
_REPO = Path(__file__).resolve().parents[1]


def _our_caller() -> str:
    """``file:line`` of the innermost frame in this repository's own code (not this file, not .venv)."""
    here = Path(__file__).resolve()
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path == here or _REPO not in path.parents:
            continue
        relative = path.relative_to(_REPO)
        if not relative.parts[0].startswith("."):
            return f"{relative}:{frame.lineno}"
    return "outside the repository"


def _has_bool_index(indices: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or [])


class SyncWatch(TorchDispatchMode):
    """Records every op that would make the host wait for ``device_type`` (see the module docstring).

    ``seen`` holds ``"<what> at <file:line>"`` strings. With ``device_type="cpu"`` (every tensor on the
    CPU) the value reads and data-dependent sizes are recorded: the ops are the same as on a GPU.
    """

    def __init__(self, device_type: str = "cuda") -> None:
        super().__init__()
        self.device_type = device_type
        self.seen: list[str] = []

    def _on_device(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and value.device.type == self.device_type

    def _crosses(self, source: torch.Tensor, target: Any, non_blocking: bool) -> bool:
        if target is None or non_blocking:
            return False
        kinds = {source.device.type, torch.device(target).type}
        return len(kinds) == 2 and self.device_type in kinds

    def _what(self, func: Any, args: Any, kwargs: dict) -> str | None:
        name = func._schema.name
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in READS and any(self._on_device(t) for t in tensors):
            return name
        if name == "aten::repeat_interleave" and kwargs.get("output_size") is None and tensors:
            return name if self._on_device(tensors[0]) else None
        if name == "aten::index" and self._on_device(args[0]) and _has_bool_index(args[1]):
            return "aten::index (bool mask)"
        if name == "aten::_to_copy" and self._crosses(
            args[0], kwargs.get("device"), kwargs.get("non_blocking", False)
        ):
            return f"blocking copy {args[0].device.type} -> {torch.device(kwargs['device']).type}"
        if name == "aten::copy_":
            non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
            if self._crosses(args[1], args[0].device, non_blocking):
                return f"blocking copy {args[1].device.type} -> {args[0].device.type}"
        return None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        what = self._what(func, args, kwargs)
        if what is not None:
            self.seen.append(f"{what} at {_our_caller()}")
        return func(*args, **kwargs)


def log_as_lightning_does(method: Any) -> None:
    """Give ``method`` a ``log`` / ``log_dict`` that turn each value into a tensor with Lightning's own
    conversion (after the module's ``number_on_device``, as ``SyncFreeLogging.log`` does), then drop it:
    ``self.log`` needs ``Trainer.fit``'s result collection, but its copies to the device should be seen."""
    to_tensor = L.LightningModule._LightningModule__to_tensor  # type: ignore[attr-defined]
    convert = getattr(method, "number_on_device", lambda value: value)

    def log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(value, torch.Tensor | numbers.Number):
            to_tensor(method, convert(value), name)

    def log_dict(values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in values.items():
            log(name, value)

    method.log, method.log_dict = log, log_dict


def audit(spec: RunSpec, steps: int = 2) -> list[str]:
    """The syncing ops of ``steps`` steps of ``spec`` on fake CUDA tensors. Empty = the step never makes
    the host wait."""
    cpu = torch.device("cpu")
    cfg = compose_cfg(spec, cpu)
    torch.manual_seed(0)
    method = build_method(cfg, cpu)  # built for real on the CPU (timm's init reads values), then made fake
    return audit_step(method, synthetic_batch(cfg, cpu), attach_trainer(method, cfg, steps), steps)


def audit_step(method: Any, batch: Any, trainer: Any, steps: int = 2) -> list[str]:
    """``audit`` of a method and batch built on the CPU (both made fake CUDA tensors here, in place for
    the method) with a Trainer from ``benchmarks.timing.attach_trainer``. bf16 autocast is left out:
    it only changes dtypes, on the device."""
    cuda = torch.device("cuda")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    make_module_fake(method, mode, cuda)
    fake_device = next(method.parameters()).device  # cuda:0 (an index-less "cuda" would query the driver)
    for module in method.modules():  # Lightning's own record of the device, which logging reads
        if isinstance(module, DeviceDtypeModuleMixin):
            module._device = fake_device
    log_as_lightning_does(method)
    batch = fake_batch(batch, mode, cuda)
    watch = SyncWatch("cuda")
    with mode:
        optimizer = method.configure_optimizers()
        trainable = [p for p in method.parameters() if p.requires_grad]
        for step in range(steps):
            with watch:
                set_global_step(trainer, step)
                method.on_train_batch_start(batch, step)  # e.g. the Gram teacher's refresh
                values = method.apply_schedules(optimizer, step)
                method.optimizer_zero_grad(0, step, optimizer)
                method.training_step(batch, step)
                for p in trainable:  # what backward would leave (it cannot run on fake CUDA tensors)
                    p.grad = torch.zeros_like(p)
                method.on_before_optimizer_step(optimizer)
                method.configure_gradient_clipping(optimizer)
            with watch:
                method.after_optimizer_step(values)
    return watch.seen


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sync_audit", description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args(argv)
    quiet_known_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    spec = spec_from_arguments(args)
    seen = audit(spec, args.steps)
    counts: dict[str, int] = {}
    for item in seen:
        counts[item] = counts.get(item, 0) + 1
    for item, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{count:4d}  {item}")
    print(f"{len(seen)} syncing ops in {args.steps} steps of {spec.method} {spec.arch}")
    return seen


if __name__ == "__main__":
    main()
