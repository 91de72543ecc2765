"""What the step benchmark measures besides time: counted FLOPs, the device's matmul peak, memory."""

from __future__ import annotations

import contextlib
import functools
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from timm.layers import Attention
from torch.utils.flop_counter import FlopCounterMode

# MFU is quoted against a nominal 800 TFLOP/s (H100 bf16 dense).
PROTOCOL_PEAK_TFLOPS = 800.0


@functools.cache
def measured_peak_tflops(device_type: str) -> float:
    """Best TFLOP/s of a large square matmul: bf16 8192^3 on a GPU, fp32 1024^3 on the CPU."""
    n, dtype, reps = (8192, torch.bfloat16, 20) if device_type == "cuda" else (1024, torch.float32, 5)
    a = torch.randn(n, n, device=device_type, dtype=dtype)
    b = torch.randn(n, n, device=device_type, dtype=dtype)
    best = 0.0
    for _ in range(3):
        sync(device_type)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device_type)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e12)
    return best


def sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def explicit_attention(module: torch.nn.Module) -> Iterator[None]:
    """Run timm attention as explicit matmuls, so FlopCounterMode sees its FLOPs on every device.

    The counter has no formula for the CPU flash-attention kernel; the explicit path computes the same
    products (q k^T and attn v), so the count is the same one the fused kernels perform.
    """
    attns = [m for m in module.modules() if isinstance(m, Attention)]
    before = [a.fused_attn for a in attns]
    for a in attns:
        a.fused_attn = False  # type: ignore[misc]  # Final in timm (for TorchScript); read on every call
    try:
        yield
    finally:
        for a, fused in zip(attns, before, strict=True):
            a.fused_attn = fused  # type: ignore[misc]


def count_flops(method: Any, fwd_bwd: Callable[[], object]) -> int:
    """FLOPs of one ``fwd_bwd()`` (teacher forward, student forward + backward, heads), counted.

    ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention as they
    execute (2 FLOPs per multiply-add), in eager mode (compiled blocks are bypassed while counting).
    Element-wise work (norms, GELU, softmax, the optimizer) is not counted (docs/benchmarks.md).
    """
    with (
        explicit_attention(method),
        torch.compiler.set_stance("force_eager"),
        FlopCounterMode(display=False) as counter,
    ):
        fwd_bwd()
    return int(counter.get_total_flops())


def reset_peak_memory(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device_type: str) -> dict[str, float | None]:
    """``peak_mem_gib``: torch.cuda.max_memory_allocated on a GPU (None on the CPU);
    ``peak_rss_gib``: the process's peak resident set (the CPU's only figure; process-wide)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None
    return {"peak_mem_gib": gpu, "peak_rss_gib": rss}
