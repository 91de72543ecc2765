"""How float32 matrix products run on the GPU: ``float32_matmul_precision`` in ``conf/config.yaml``.

``high`` (our default) lets CUDA float32 matmuls use TF32 tensor cores (10-bit mantissa inputs, float32
accumulation), as the official DINOv2 training script does (``dinov2/train/train.py`` sets
``torch.backends.cuda.matmul.allow_tf32 = True``); ``highest`` keeps full float32; ``medium`` also
allows bfloat16 products (torch 2.14 applies that to CPU matmuls as well). On the CPU ``high`` changes
nothing. Under bf16-mixed autocast the backbone's and heads' products already run in bf16: the setting
matters for ``trainer.precision=32`` and for the float32 work around them (k-NN similarities, probes,
losses).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("highest", "high", "medium")


def set_float32_matmul_precision(precision: str | None) -> None:
    """Apply ``precision`` process-wide (``None``: leave torch's setting as it is)."""
    if precision is None:
        return
    if precision not in PRECISIONS:
        raise ValueError(
            f"float32_matmul_precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    torch.set_float32_matmul_precision(precision)


@contextlib.contextmanager
def full_float32_matmuls() -> Iterator[None]:
    """Full float32 products inside the block (no TF32), whatever the process-wide setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
