"""Time the teacher's Sinkhorn–Knopp targets alone, at DINOv2's patch-target size.

    python -m benchmarks.sinkhorn                         # 9,830 masked tokens x 65,536 prototypes, bf16
    python -m benchmarks.sinkhorn --rows 256              # the CLS targets of a batch of 128

9,830 is the expected number of masked tokens in a batch of 128 under the protocol (256 global crops,
half of them masked at ratios U(0.1, 0.5) of 256 patches). The logits are cosines in [-1, 1], as a
weight-normed head gives. Reports the median of ``--repeats`` calls after one warm-up (CUDA-synchronised).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sslvit.losses import SinkhornKnopp


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sinkhorn", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=9830)
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.rand(args.rows, args.prototypes, device=device, generator=generator)
    logits = (2 * logits - 1).bfloat16()
    sinkhorn = SinkhornKnopp(args.iters)

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sinkhorn.probs(logits, args.temperature)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3

    timed()  # warm-up
    ms = statistics.median(timed() for _ in range(args.repeats))
    shape = f"{args.rows} x {args.prototypes}"
    print(f"{device.type}: SinkhornKnopp({args.iters}) on {shape} bf16 logits: {ms:.1f} ms")
    return {"ms": ms, "rows": args.rows, "prototypes": args.prototypes}


if __name__ == "__main__":
    main()
