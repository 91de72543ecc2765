"""Cross-entropy against soft targets, computed in row chunks so that no (rows, K) fp32 temporary is kept.

DINO's and iBOT's losses are ``-sum_k t[k] log softmax(s / tau)[k]`` over 65,536 prototypes; for
DINOv2's ~10k masked patch tokens per batch of 128 each fp32 (rows, K) tensor is 2.6 GB. Written with
autograd ops, the step holds the fp32 copy of the logits, the log-softmax (saved for backward), the
product with the targets and its negation at once. This function keeps only its inputs: the forward runs
chunk by chunk, and the backward recomputes the softmax per chunk from the saved logits, using
``d/ds = (softmax(s / tau) * sum_k t[k] - t) / tau``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Rows per chunk: about 2**26 elements (256 MB in fp32) at a time.
CHUNK_ELEMENTS = 2**26


def _rows_per_chunk(num_classes: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_classes))


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
        rows, classes = logits.shape
        step = _rows_per_chunk(classes)
        out = logits.new_empty(rows, dtype=torch.float32)
        for start in range(0, rows, step):
            s = logits[start : start + step].float() / temperature
            out[start : start + step] = -(targets[start : start + step].float() * F.log_softmax(s, -1)).sum(
                -1
            )
        ctx.save_for_backward(logits, targets)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        logits, targets = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        rows, classes = logits.shape
        step = _rows_per_chunk(classes)
        grad = torch.empty_like(logits)
        for start in range(0, rows, step):
            t = targets[start : start + step].float()
            p = F.softmax(logits[start : start + step].float() / ctx.temperature, -1)
            g = grad_out[start : start + step, None] / ctx.temperature
            grad[start : start + step] = (p * t.sum(-1, keepdim=True) - t) * g
        return grad, None, None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``-sum_k targets[k] * log_softmax(logits / temperature)[k]`` in fp32: (rows, K) -> (rows,).

    ``logits`` may be bf16 (the head's output under autocast; its gradient comes back in that dtype);
    ``targets`` are treated as constants (no gradient), and need not sum to 1.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits and targets must both be (rows, K), got {logits.shape} and {targets.shape}")
    return _SoftCrossEntropy.apply(logits, targets.detach(), temperature)
