"""Pretraining-step benchmark: ms/step, images/s, counted FLOPs per image, MFU and peak memory.

Protocol (docs/benchmarks.md): synthetic crops built once on the device (2 x 224 + 8 x 98 at patch 14),
masks from the project's MaskGenerator outside the timed step, batch 128, bf16 autocast; timed: the
whole optimizer step (forward, backward, last-layer freeze, clipping 3.0, schedules, AdamW, EMA).

    python -m benchmarks.step --method dinov2 --arch vit_small           # one row
    python -m benchmarks.step --suite table --json step.json             # the docs/benchmarks.md table
    python -m benchmarks.step --suite switches                           # each speed switch on/off
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
import json
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import sslvit.methods.dino as dino_module
from benchmarks.build import (
    ARCH_NAMES,
    RunSpec,
    add_run_arguments,
    build_method,
    compose_cfg,
    spec_from_arguments,
    synthetic_batch,
)
from benchmarks.measure import (
    PROTOCOL_PEAK_TFLOPS,
    count_flops,
    measured_peak_tflops,
    peak_memory_gib,
    reset_peak_memory,
)
from benchmarks.timing import (
    attach_trainer,
    detach_trainer,
    forward_backward,
    time_fit_mode,
    time_step_mode,
)
from sslvit.train import quiet_known_warnings
from sslvit.utils.matmul_precision import set_float32_matmul_precision

# (fused AdamW, compiled blocks); both keep bf16 autocast and SDPA attention (the protocol, timm's default).
BASELINE = (False, False)  # eager, torch's default (for-each) AdamW
OPTIMISED = (True, True)


@contextlib.contextmanager
def crops_grouped(enabled: bool) -> Iterator[None]:
    """``group_crops=False`` (benchmark-only ablation): DINO's student runs one pass per crop."""
    original = dino_module.cat_by_resolution
    if not enabled:
        dino_module.cat_by_resolution = list  # type: ignore[assignment]
    try:
        yield
    finally:
        dino_module.cat_by_resolution = original


_FLOPS_CACHE: dict[tuple, int] = {}


def _flops_key(spec: RunSpec) -> tuple:
    return (spec.method, spec.arch, spec.patch, spec.global_size, spec.local_size, spec.num_local, spec.batch,
            tuple(spec.overrides))  # fmt: skip


def run_one(spec: RunSpec, device: torch.device, seed: int = 0, flops_only: bool = False) -> dict[str, Any]:
    """Build, count FLOPs (once per shape), warm up and time one configuration; return its row."""
    dev = device.type
    # Left over from earlier rows (should be ~0): it would inflate this row's peak.
    mem_before = torch.cuda.memory_allocated() / 2**30 if dev == "cuda" else None
    cfg = compose_cfg(spec, device)
    set_float32_matmul_precision(cfg.get("float32_matmul_precision"))  # as train.py: TF32 on CUDA
    num_steps = spec.warmup + spec.steps
    with crops_grouped(spec.group_crops):
        torch.manual_seed(seed)
        method = build_method(cfg, device)
        batch = synthetic_batch(cfg, device, seed)
        trainer = attach_trainer(method, cfg, num_steps)
        key = _flops_key(spec)
        if key not in _FLOPS_CACHE:
            # The counting pass updates buffers (DINO / iBOT centres): restore them so that a row's
            # losses do not depend on whether an earlier row of the same shape filled the cache.
            buffers = {name: b.clone() for name, b in method.named_buffers()}
            _FLOPS_CACHE[key] = count_flops(
                method, functools.partial(forward_backward, method, trainer, batch, 0)
            )
            method.zero_grad(set_to_none=True)
            with torch.no_grad():
                for name, b in method.named_buffers():
                    b.copy_(buffers[name])
        if flops_only:
            return {"label": spec.label, "method": spec.method, "arch": spec.arch, "batch": spec.batch,
                    "gflop_per_img": _FLOPS_CACHE[key] / spec.batch / 1e9}  # fmt: skip
        reset_peak_memory(dev)
        if spec.mode == "step":
            times, losses = time_step_mode(method, trainer, batch, num_steps, dev)
        elif spec.mode in ("fit", "fit-callbacks"):
            detach_trainer(method)
            with_callbacks = spec.mode == "fit-callbacks"
            times, losses = time_fit_mode(method, cfg, batch, num_steps, dev, with_callbacks)
        else:
            raise ValueError(f"mode must be step, fit or fit-callbacks, got {spec.mode!r}")
    memory = peak_memory_gib(dev)
    timed = times[spec.warmup :]
    ms = statistics.median(timed)
    img_s = spec.batch / (ms / 1e3)
    flops_per_img = _FLOPS_CACHE[key] / spec.batch
    achieved = img_s * flops_per_img / 1e12
    peak = measured_peak_tflops(dev)
    row = {k: v for k, v in dataclasses.asdict(spec).items() if k != "overrides"}
    row.update(
        overrides=list(spec.overrides),
        device=torch.cuda.get_device_name(device) if dev == "cuda" else "cpu",
        steps_timed=len(timed),
        ms_per_step=ms,
        ms_per_step_min=min(timed),
        ms_per_step_max=max(timed),
        img_per_s=img_s,
        gflop_per_img=flops_per_img / 1e9,
        flops_source="counted: torch.utils.flop_counter.FlopCounterMode, one training_step + backward",
        achieved_tflops=achieved,
        peak_tflops_measured=peak,
        mfu=achieved / peak,
        mfu_protocol_800=achieved / PROTOCOL_PEAK_TFLOPS if dev == "cuda" else None,
        loss_first=losses[0] if losses and spec.mode == "step" else None,  # fit: only the last
        loss_last=losses[-1] if losses else None,
        mem_before_gib=mem_before,
        **memory,
    )
    del method, batch, trainer
    gc.collect()
    if dev == "cuda":
        torch.cuda.empty_cache()
    torch._dynamo.reset()  # compiled graphs of one row must not count towards the next row's limit
    return row


def suite_specs(name: str, template: RunSpec) -> list[RunSpec]:
    """``table``: DINO, iBOT, DINOv2 x ViT-S, ViT-B, baseline and optimised (12 rows);
    ``switches``: DINOv2 ViT-S from the baseline with one switch changed per row (+ DINO's grouping, and
    DINOv2 ViT-B with drop path 0.3 computed on every sample or on the kept ones only);
    ``all``: both, plus the three target rows optimised with packed crops (which decide that default).

    Most wanted first, in case --budget-s cuts the run: the three rows with a target (DINOv2 ViT-B,
    DINOv2 ViT-S, DINO ViT-S) optimised, then their baselines, then (``all``) their packed variants, then
    the other three pairs, then the switches."""
    patch = template.patch
    targets = [("dinov2", "vit_base"), ("dinov2", "vit_small"), ("dino", "vit_small")]
    others = [("dino", "vit_base"), ("ibot", "vit_small"), ("ibot", "vit_base")]

    def row(method: str, arch: str, setting: str, **changes: Any) -> RunSpec:
        fused, compiled = OPTIMISED if setting.startswith("optimised") else BASELINE
        label = f"{method} {ARCH_NAMES[arch]}/{patch} {setting}"
        return dataclasses.replace(
            template, method=method, arch=arch, label=label, fused_adamw=fused, compile=compiled, **changes
        )

    specs: list[RunSpec] = []
    if name in ("table", "all"):
        specs += [row(m, a, s) for s in ("optimised", "baseline") for m, a in targets]
    if name == "all":
        specs += [row(m, a, "optimised, packed crops", pack_crops=True) for m, a in targets]
    if name in ("table", "all"):
        specs += [row(m, a, s) for m, a in others for s in ("optimised", "baseline")]
    if name in ("switches", "all"):
        fused, compiled = BASELINE
        base = dataclasses.replace(
            template, method="dinov2", arch="vit_small", fused_adamw=fused, compile=compiled
        )
        tag = f"dinov2 ViT-S/{patch}"
        specs += [
            dataclasses.replace(base, label=f"{tag} baseline"),
            dataclasses.replace(base, label=f"{tag} fp32, TF32 matmuls (precision 32)", precision="32"),
            dataclasses.replace(base, label=f"{tag} + fused AdamW", fused_adamw=True),
            dataclasses.replace(base, label=f"{tag} + compile blocks", compile=True),
            dataclasses.replace(base, label=f"{tag} SDPA off", sdpa=False),
            dataclasses.replace(base, label=f"{tag} + packed crops", pack_crops=True),
            dataclasses.replace(base, label=f"{tag} + compile + packed crops", compile=True, pack_crops=True),
            dataclasses.replace(base, label=f"{tag} through Trainer.fit", mode="fit"),
            dataclasses.replace(
                base, label=f"{tag} through Trainer.fit, per-step callbacks and logger", mode="fit-callbacks"
            ),
            dataclasses.replace(base, method="dino", label=f"dino ViT-S/{patch} baseline"),
            dataclasses.replace(
                base, method="dino", label=f"dino ViT-S/{patch} crops not grouped", group_crops=False
            ),
            dataclasses.replace(
                base, method="dino", label=f"dino ViT-S/{patch} packed crops", pack_crops=True
            ),
        ]
        # Stochastic depth 0.3 in every block of ViT-B (the reference's drop-path row, the official config's
        # uniform rate): dropped samples skipped or masked.
        drop = [*template.overrides, "backbone.drop_path_rate=0.3", "backbone.drop_path_uniform=true"]
        for subset, how in ((False, "masked (timm DropPath)"), (True, "skipped")):
            specs.append(
                dataclasses.replace(
                    base,
                    arch="vit_base",
                    label=f"dinov2 ViT-B/{patch} drop path 0.3, {how}",
                    overrides=[*drop, f"backbone.drop_path_subset={str(subset).lower()}"],
                )
            )
    if not specs:
        raise ValueError(f"--suite must be table, switches or all, got {name!r}")
    unique: dict[tuple, RunSpec] = {}  # `all` would time the DINOv2 / DINO ViT-S baselines twice
    for spec in specs:
        unique.setdefault(_spec_key(spec), spec)
    return list(unique.values())


def _spec_key(spec: RunSpec) -> tuple:
    return tuple(
        tuple(v) if isinstance(v, list) else v for k, v in dataclasses.asdict(spec).items() if k != "label"
    )


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec) if spec else str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (``n/a`` for what was not measured, e.g. GPU memory on the CPU)."""
    columns = [  # (header, key, format)
        ("run", "label", ""), ("mode", "mode", ""), ("prec", "precision", ""),
        ("fused AdamW", "fused_adamw", ""), ("compile", "compile", ""), ("SDPA", "sdpa", ""),
        ("packed", "pack_crops", ""),
        ("ms/step", "ms_per_step", ".1f"), ("img/s", "img_per_s", ".1f"),
        ("GFLOP/img", "gflop_per_img", ".1f"), ("MFU", "mfu", ".1%"), ("MFU@800", "mfu_protocol_800", ".1%"),
        ("peak GiB", "peak_mem_gib", ".1f"), ("peak RSS GiB", "peak_rss_gib", ".1f"),
    ]  # fmt: skip
    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | error: {r['error']} |")
            continue
        label = r.get("label") or f"{r['method']} {r['arch']}"
        cells = [label] + [_fmt(r.get(key), fmt) for _, key, fmt in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def library_versions() -> dict[str, str | None]:
    """Versions of what the step's speed depends on (the GPU machine's image may differ from our pins)."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "lightning", "triton"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    versions["cudnn"] = None if cudnn is None else str(cudnn)
    versions["cuda"] = torch.version.cuda
    return versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    add_run_arguments(p)
    p.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "32"])
    p.add_argument("--compile", action="store_true", help="backbone.compile_blocks=true")
    p.add_argument("--no-fused-adamw", action="store_true", help="method.optim.fused=false")
    p.add_argument("--no-sdpa", action="store_true", help="backbone.fused_attn=false")
    p.add_argument("--no-group-crops", action="store_true", help="DINO: one student pass per crop")
    p.add_argument(
        "--mode",
        default="step",
        choices=["step", "fit", "fit-callbacks"],
        help="fit: through Trainer.fit; fit-callbacks: also the per-step callbacks and a logger",
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--suite", nargs="?", const="table", choices=["table", "switches", "all"])
    p.add_argument("--budget-s", type=float, default=None, help="start no new suite row after this")
    p.add_argument("--json", type=Path, default=None, help="write the rows here (after every row)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flops-only", action="store_true", help="count FLOPs per image, time nothing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    quiet_known_warnings()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.warmup < 0 or args.steps < 1:
        raise SystemExit(f"need --warmup >= 0 and --steps >= 1, got {args.warmup}, {args.steps}")
    template = dataclasses.replace(
        spec_from_arguments(args), precision=args.precision, compile=args.compile,
        fused_adamw=not args.no_fused_adamw, sdpa=not args.no_sdpa, group_crops=not args.no_group_crops,
        mode=args.mode, warmup=args.warmup, steps=args.steps,
    )  # fmt: skip
    specs = suite_specs(args.suite, template) if args.suite else [template]
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "versions": library_versions(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_threads": torch.get_num_threads(),
        "peak_tflops_measured": measured_peak_tflops(device.type),
        "rows": [],
    }
    start = time.perf_counter()
    for spec in specs:
        if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
            report["rows"].append({"label": spec.label, "error": "skipped: --budget-s reached"})
            continue
        try:
            row = run_one(spec, device, args.seed, args.flops_only)
        except Exception as error:  # a suite keeps going past one failing row (e.g. out of memory)
            if not args.suite:
                raise
            row = {"label": spec.label, "error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}
            gc.collect()
            torch._dynamo.reset()
        report["rows"].append(row)
        print(format_table([row]).splitlines()[-1], flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    report["wall_s"] = time.perf_counter() - start
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['device']}, torch {report['torch']}, measured matmul peak "
          f"{report['peak_tflops_measured']:.3g} TFLOP/s\n{format_table(report['rows'])}")  # fmt: skip
    return report


if __name__ == "__main__":
    main()
