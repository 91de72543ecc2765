"""Estimate a step's peak accelerator memory on any machine: the real step run on fake tensors.

    python -m benchmarks.memory --method dinov2 --arch vit_base              # one configuration
    python -m benchmarks.memory --suite table                                # DINO, iBOT, DINOv2 x S, B

The method and a protocol batch are built as ``benchmarks.step`` builds them, turned into fake tensors
(shapes and dtypes, no data: ``torch._subclasses.FakeTensorMode``), and one forward + backward of the
real ``training_step`` runs under bf16 autocast with AdamW's two moments already allocated (a step after
the first). Every tensor the step creates is counted from its creation until Python frees it; the peak
of that sum is the estimate, next to ``torch.cuda.max_memory_allocated`` in meaning. Not in it: the
caching allocator's rounding, cuBLAS / attention workspaces, the optimizer's own temporaries, and
differences between the CPU's and CUDA's autocast and attention kernels; compiled blocks usually need
less. It answers "does this batch fit" and "what holds the memory" without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import weakref
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.build import (
    ARCH_NAMES,
    RunSpec,
    add_run_arguments,
    build_method,
    compose_cfg,
    spec_from_arguments,
    synthetic_batch,
)
from benchmarks.fake import fake_batch, make_module_fake
from benchmarks.timing import attach_trainer, forward_backward, set_global_step
from sslvit.train import quiet_known_warnings

GIB = 2**30


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages alive now and at the peak; each storage counted once, until it is freed.

    ``by_op_at_peak`` says which aten op made the bytes alive at the peak (with their dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.origin: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.now = self.peak = 0
        self.by_op_at_peak: collections.Counter = collections.Counter()

    def add(self, tensor: torch.Tensor, made_by: str = "before the step") -> None:
        storage = tensor.untyped_storage()
        if storage in self.origin:  # a view, or a tensor seen before
            return
        size = storage.nbytes()
        self.origin[storage] = (made_by, str(tensor.dtype).removeprefix("torch."), size)
        weakref.finalize(storage, self._free, size)
        self.now += size
        if self.now > self.peak:
            self.peak = self.now
            if size >= 2**20:  # a breakdown per new peak is costly; small tensors barely move it
                self.by_op_at_peak = collections.Counter()
                for op, dtype, nbytes in list(self.origin.values()):
                    self.by_op_at_peak[(op, dtype)] += nbytes

    def _free(self, size: int) -> None:
        self.now -= size

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                self.add(item, func.overloadpacket.__name__)
        return out


def estimate(spec: RunSpec) -> dict[str, Any]:
    """Estimated peak GiB of one step of ``spec`` (its compile flag is ignored: eager ops are counted)."""
    cpu = torch.device("cpu")
    cfg = compose_cfg(spec, cpu)
    torch.manual_seed(0)
    method = build_method(cfg, cpu)  # built for real (timm's init reads values), then made fake
    batch = synthetic_batch(cfg, cpu)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    make_module_fake(method, fake, cpu)
    batch = fake_batch(batch, fake, cpu)
    trainer = attach_trainer(method, cfg, 2)
    live = LiveTensorBytes()
    for tensor in [*method.parameters(), *method.buffers()]:
        live.add(tensor, "parameters and buffers")
    for tensor in tree_flatten([getattr(batch, f.name) for f in dataclasses.fields(batch)])[0]:
        if isinstance(tensor, torch.Tensor):
            live.add(tensor, "batch")
    with fake, live:
        trainable = [p for p in method.parameters() if p.requires_grad]
        moments = [torch.zeros_like(p, dtype=torch.float32) for p in trainable for _ in range(2)]
        before_step = live.now
        set_global_step(trainer, 1)
        forward_backward(method, trainer, batch, 1)
    del moments
    top = sorted(live.by_op_at_peak.items(), key=lambda kv: -kv[1])
    return {
        "label": spec.label or f"{spec.method} {ARCH_NAMES[spec.arch]}/{spec.patch}",
        "method": spec.method,
        "arch": spec.arch,
        "batch": spec.batch,
        "pack_crops": spec.pack_crops,
        "overrides": list(spec.overrides),
        "state_gib": before_step / GIB,
        "peak_gib_estimated": live.peak / GIB,
        "at_peak_gib": [{"op": op, "dtype": dtype, "gib": b / GIB} for (op, dtype), b in top[:8]],
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--suite", action="store_true", help="DINO, iBOT, DINOv2 x ViT-S, ViT-B")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    quiet_known_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    template = spec_from_arguments(args)
    pairs = [(m, a) for m in ("dinov2", "dino", "ibot") for a in ("vit_small", "vit_base")]
    specs = [dataclasses.replace(template, method=m, arch=a) for m, a in pairs] if args.suite else [template]
    rows = []
    print("| run | batch | parameters, AdamW moments, batch GiB | estimated peak GiB | largest at the peak |")
    print("|---|---|---|---|---|")
    for spec in specs:
        row = estimate(spec)
        rows.append(row)
        top = ", ".join(f"{t['op']} {t['dtype']} {t['gib']:.1f}" for t in row["at_peak_gib"][:3])
        sizes = f"{row['state_gib']:.1f} | {row['peak_gib_estimated']:.1f}"
        print(f"| {row['label']} | {row['batch']} | {sizes} | {top} |", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
