"""The chunked soft-target cross-entropy equals its autograd definition and keeps no extra activations."""

import pytest
import torch
import torch.nn.functional as F

from sslvit.losses import soft_cross_entropy as sce_module
from sslvit.losses.soft_cross_entropy import soft_cross_entropy


def reference(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    return -(targets.float() * F.log_softmax(logits.float() / temperature, -1)).sum(-1)


def inputs(rows: int = 37, classes: int = 50, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, classes, generator=g)).to(dtype).requires_grad_()
    targets = torch.softmax(torch.randn(rows, classes, generator=g) / 0.3, -1)
    return logits, targets


@pytest.mark.parametrize("chunk_elements", [1, 200, 2**26])  # one row / 4 rows / everything per chunk
def test_values_and_gradients_equal_the_autograd_definition(monkeypatch, chunk_elements):
    monkeypatch.setattr(sce_module, "CHUNK_ELEMENTS", chunk_elements)
    logits, targets = inputs()
    weights = torch.rand(logits.shape[0])  # a non-uniform upstream gradient per row
    out = soft_cross_entropy(logits, targets, 0.1)
    (grad,) = torch.autograd.grad((out * weights).sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = reference(ref_logits, targets, 0.1)
    (ref_grad,) = torch.autograd.grad((ref * weights).sum(), ref_logits)
    assert out.dtype == torch.float32 and out.shape == (37,)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=0)  # x / T computed as x * (1 / T): rounding
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_targets_that_do_not_sum_to_one_and_bf16_logits():
    logits, targets = inputs(dtype=torch.bfloat16)
    targets = 2.5 * targets  # e.g. DINO's summed targets of two teacher views
    out = soft_cross_entropy(logits, targets, 0.1)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    ref_logits = logits.detach().clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(reference(ref_logits, targets, 0.1).sum(), ref_logits)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference(logits.detach(), targets, 0.1))
    torch.testing.assert_close(grad, ref_grad, rtol=1e-2, atol=1e-2)  # bf16 rounding of the gradient


def test_keeps_only_its_inputs_for_backward():
    """What autograd keeps: the logits and targets only, not the fp32 log-softmax and its products."""
    logits, targets = inputs(rows=64, classes=1000, dtype=torch.bfloat16)

    def saved_bytes(fn) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(logits, targets, 0.1).sum()
        return total

    # bf16 logits (2 bytes an element) + fp32 targets; autograd's version keeps the targets and an fp32
    # log-softmax (4 bytes an element) instead of the logits
    assert saved_bytes(soft_cross_entropy) == logits.numel() * 2 + targets.numel() * 4 + 4  # + 1 / T
    assert saved_bytes(reference) >= logits.numel() * 4 + targets.numel() * 4


def test_no_gradient_to_the_targets_and_shape_errors():
    logits, targets = inputs()
    targets.requires_grad_()
    soft_cross_entropy(logits, targets, 0.1).sum().backward()
    assert logits.grad is not None and targets.grad is None
    with pytest.raises(ValueError, match=r"\(rows, K\)"):
        soft_cross_entropy(logits, targets[:, :10], 0.1)
