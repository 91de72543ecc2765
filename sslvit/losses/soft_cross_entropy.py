"""Cross-entropy against soft targets, computed in row chunks so that no (rows, K) fp32 temporary is kept.

DINO's and iBOT's losses are ``-sum_k t[k] log softmax(s / tau)[k]`` over 65,536 prototypes; for
DINOv2's ~10k masked patch tokens per batch of 128 each fp32 (rows, K) tensor is 2.6 GB. Written with
autograd ops, the step holds the fp32 copy of the logits, the log-softmax (saved for backward), the
product with the targets and its negation at once. This function keeps only its inputs: the forward runs
chunk by chunk, and the backward recomputes the softmax per chunk from the saved logits, using
``d/ds = (softmax(s / tau) * sum_k t[k] - t) / tau``. Within a chunk the work is done in place where it
can be, so each chunk is read and written as few times as eager PyTorch allows (the scaling reads bf16 and
writes fp32 once; the gradient is cast into its dtype once).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Rows per chunk: about 2**26 elements (256 MB in fp32) at a time.
CHUNK_ELEMENTS = 2**26


def _rows_per_chunk(num_classes: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_classes))


def _scaled_fp32(logits: torch.Tensor, inv_temp: torch.Tensor) -> torch.Tensor:
    # One pass: read in the logits' dtype, multiply and write in fp32 (``inv_temp`` is a 1-d fp32
    # tensor, so it takes part in type promotion; a Python float would keep bf16).
    return logits * inv_temp


class _SoftCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
        rows, classes = logits.shape
        step = _rows_per_chunk(classes)
        inv_temp = torch.full((1,), 1.0 / temperature, device=logits.device)
        out = logits.new_empty(rows, dtype=torch.float32)
        for start in range(0, rows, step):
            log_probs = F.log_softmax(_scaled_fp32(logits[start : start + step], inv_temp), -1)
            out[start : start + step] = log_probs.mul_(targets[start : start + step]).sum(-1).neg_()
        ctx.save_for_backward(logits, targets, inv_temp)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        logits, targets, inv_temp = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        rows, classes = logits.shape
        step = _rows_per_chunk(classes)
        grad = torch.empty_like(logits)
        for start in range(0, rows, step):
            t = targets[start : start + step]
            g = grad_out[start : start + step, None] * inv_temp  # (rows, 1)
            p = F.softmax(_scaled_fp32(logits[start : start + step], inv_temp), -1)
            # (softmax * sum(t) - t) * g / T, written in place and cast once into the gradient's dtype
            p.mul_(t.sum(-1, keepdim=True) * g)
            grad[start : start + step] = torch.addcmul(p, t, g, value=-1.0, out=p)
        return grad, None, None


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row ``-sum_k targets[k] * log_softmax(logits / temperature)[k]`` in fp32: (rows, K) -> (rows,).

    ``logits`` may be bf16 (the head's output under autocast; its gradient comes back in that dtype);
    ``targets`` are treated as constants (no gradient), and need not sum to 1.
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits and targets must both be (rows, K), got {logits.shape} and {targets.shape}")
    return _SoftCrossEntropy.apply(logits, targets.detach(), temperature)


def positive_temperature(value: float, name: str = "student_temp") -> float:
    """``value`` if it can divide logits, else one ``ValueError`` naming ``name`` (for constructors)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value
