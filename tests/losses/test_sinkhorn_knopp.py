"""Sinkhorn–Knopp against DINOv2's algorithm: its own fp32 output on ordinary logits, and the same
algorithm in float64 where a logit span beyond fp32's exponent range makes prototype masses underflow."""

import math

import pytest
import torch

from sslvit.losses import SinkhornKnopp


def float64_reference(logits: torch.Tensor, temperature: float, num_iters: int = 3) -> torch.Tensor:
    """DINOv2's alternating normalisations of Q = exp(L / T), in float64 and in logs so that no span
    underflows: the matrix sums to 1, then per round every prototype gets mass 1/K and every sample 1/n;
    finally the samples' rows are rescaled by n to sum to 1."""
    log_q = logits.double() / temperature  # (n, K)
    num_samples, num_prototypes = log_q.shape
    log_q = log_q - torch.logsumexp(log_q.flatten(), 0)
    for _ in range(num_iters):
        log_q = log_q - torch.logsumexp(log_q, 0, keepdim=True) - math.log(num_prototypes)
        log_q = log_q - torch.logsumexp(log_q, 1, keepdim=True) - math.log(num_samples)
    return log_q.exp() * num_samples


# facebookresearch/dinov2 at b8931f7bf91576930313be2c6d6af376033b35f0,
# dinov2/loss/dino_clstoken_loss.py, DINOLoss.sinkhorn_knopp_teacher(logits, 0.1, n_iterations=3), fp32 on
# the CPU, on these (6, 5) logits (values in [-1, 1] like a weight-normed head's).
GOLDEN_LOGITS = [
    [0.2739, -0.4604, -0.9181, -0.9669, 0.6265],
    [0.8255, 0.2133, 0.459, 0.0872, 0.8701],
    [0.6317, -0.9945, 0.7148, -0.9328, 0.4593],
    [-0.6487, 0.7264, 0.0829, -0.4006, -0.1546],
    [-0.9434, -0.7514, 0.3412, 0.2944, 0.2308],
    [-0.2326, 0.9944, 0.9617, 0.3711, 0.3009],
]
GOLDEN_TARGETS_T01 = [
    [0.0723110065, 6.53960069e-06, 2.18281201e-07, 1.64235844e-05, 0.927665949],
    [0.611215472, 0.000187419384, 0.00709752599, 0.0211245492, 0.360375017],
    [0.474282503, 5.73999337e-09, 0.493784785, 4.23145093e-06, 0.0319284871],
    [7.55141173e-06, 0.989424467, 0.00515144039, 0.00501767313, 0.000398788019],
    [7.44995816e-08, 7.10183059e-08, 0.0128145358, 0.983649492, 0.00353593729],
    [8.13861243e-06, 0.242501706, 0.567454755, 0.18939805, 0.000637347577],
]
# The same function at T = 0.04: the first column of each row, and the smallest target (row 2, col 1).
GOLDEN_T004_FIRST_COLUMN = [
    0.0006667720736004412, 0.5954597592353821, 0.5683462023735046,
    8.895413973562111e-14, 5.121762249212096e-19, 7.092645156088484e-13,
]  # fmt: skip
GOLDEN_T004_SMALLEST = 1.6567001105997917e-20


def test_ordinary_logits_equal_dinov2s_output():
    logits = torch.tensor(GOLDEN_LOGITS)
    out = SinkhornKnopp(3).probs(logits, 0.1)
    torch.testing.assert_close(out, torch.tensor(GOLDEN_TARGETS_T01), rtol=1e-5, atol=1e-7)
    sharp = SinkhornKnopp(3).probs(logits, 0.04)
    torch.testing.assert_close(sharp[:, 0], torch.tensor(GOLDEN_T004_FIRST_COLUMN), rtol=1e-4, atol=1e-7)
    assert sharp[2, 1].item() == pytest.approx(GOLDEN_T004_SMALLEST, rel=1e-3)
    # the reference used below is that same algorithm
    torch.testing.assert_close(float64_reference(logits, 0.1).float(), out, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_wide_logit_span_equals_float64(dtype):
    """N(0, 2^2) logits at T = 0.07 span about 200 nats: exp() of them, even shifted by the maximum,
    leaves whole prototypes at zero mass in fp32."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(256, 4096, generator=generator) * 2.0).to(dtype)
    out = SinkhornKnopp(3).probs(logits, 0.07)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.double() - float64_reference(logits, 0.07)).abs().max().item() < 1e-5


def test_dead_prototypes_at_low_temperature_equal_float64():
    """Cosine logits where 5% of the prototypes are dead (every logit near -1), at T = 0.02."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.rand(256, 4096, generator=generator) * 2 - 1
    dead = torch.randperm(4096, generator=generator)[: 4096 // 20]
    logits[:, dead] = -1 + 0.05 * torch.rand(256, len(dead), generator=generator)
    out = SinkhornKnopp(3).probs(logits, 0.02)
    reference = float64_reference(logits, 0.02)
    assert torch.isfinite(out).all()
    assert (out.double() - reference).abs().max().item() < 1e-5
    # the dead prototypes still receive their share of the mass
    dead_mass = out[:, dead].sum(0).double()
    torch.testing.assert_close(dead_mass, reference[:, dead].sum(0), rtol=1e-4, atol=1e-6)
    assert dead_mass.min().item() > 0.01


def test_dead_samples_and_one_round_equal_float64():
    """Samples whose every logit lies far below the rest, and a single normalisation round."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.rand(128, 1024, generator=generator) * 2 - 1
    logits[:8] -= 3.0
    logits[:, :40] -= 3.0
    for num_iters in (1, 3, 5):
        out = SinkhornKnopp(num_iters).probs(logits, 0.02)
        reference = float64_reference(logits, 0.02, num_iters)
        assert (out.double() - reference).abs().max().item() < 1e-5
