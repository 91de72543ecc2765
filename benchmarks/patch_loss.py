"""Time DINOv2's patch-level loss parts alone: Sinkhorn–Knopp targets, and the soft cross-entropy.

    python -m benchmarks.patch_loss                       # 9,830 masked tokens x 65,536 prototypes
    python -m benchmarks.patch_loss --rows 256            # the CLS targets of a batch of 128

9,830 is the expected number of masked tokens in a batch of 128 under the protocol (256 global crops,
half of them masked at ratios U(0.1, 0.5) of 256 patches). The logits are bf16 cosines in [-1, 1], as
a weight-normed head gives. Reports the median of ``--repeats`` calls after one warm-up
(CUDA-synchronised): ``SinkhornKnopp.probs`` (teacher, no gradient) and ``soft_cross_entropy`` forward +
backward (student logits against those targets).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import median_ms
from sslvit.losses import SinkhornKnopp
from sslvit.losses.soft_cross_entropy import soft_cross_entropy


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.patch_loss", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=9830)
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--iters", type=int, default=3, help="Sinkhorn-Knopp rounds")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)

    def cosines() -> torch.Tensor:
        uniform = torch.rand(args.rows, args.prototypes, device=device, generator=generator)
        return (2 * uniform - 1).bfloat16()

    teacher, student = cosines(), cosines().requires_grad_()
    sinkhorn = SinkhornKnopp(args.iters)
    targets = sinkhorn.probs(teacher, 0.07)

    def loss_step() -> None:
        torch.autograd.grad(soft_cross_entropy(student, targets, 0.1).sum(), student)

    result = {
        "rows": args.rows,
        "prototypes": args.prototypes,
        "sinkhorn_ms": median_ms(lambda: sinkhorn.probs(teacher, 0.07), device.type, args.repeats),
        "soft_cross_entropy_ms": median_ms(loss_step, device.type, args.repeats),
    }
    shape = f"{args.rows} x {args.prototypes}"
    print(f"{device.type}, {shape} bf16 logits: SinkhornKnopp({args.iters}) {result['sinkhorn_ms']:.1f} ms, "
          f"soft cross-entropy forward + backward {result['soft_cross_entropy_ms']:.1f} ms")  # fmt: skip
    return result


if __name__ == "__main__":
    main()
