"""Sinkhorn–Knopp, KoLeo and the iBOT patch loss on cases whose answers are known."""

import math

import pytest
import torch

from sslvit.losses import IBOTPatchLoss, KoLeoLoss, SinkhornKnopp


def test_sinkhorn_rows_sum_to_one_and_prototypes_share_mass():
    torch.manual_seed(0)
    logits = torch.randn(64, 16)
    targets = SinkhornKnopp(num_iters=50).probs(logits, temperature=1.0)
    assert torch.allclose(targets.sum(dim=1), torch.ones(64), atol=1e-5)
    # each of the K prototypes receives n / K of the total mass (the uniform marginal)
    assert torch.allclose(targets.sum(dim=0), torch.full((16,), 64 / 16), rtol=1e-3)
    # 3 iterations (the paper's setting) already balance far better than a softmax
    three = SinkhornKnopp(3).probs(logits, 1.0).sum(dim=0)
    softmax = torch.softmax(logits, -1).sum(dim=0)
    assert (three - 4.0).abs().max() < 0.2 * (softmax - 4.0).abs().max()


def test_sinkhorn_spreads_a_dominant_prototype():
    logits = torch.zeros(8, 4)
    logits[:, 0] = 5.0  # every sample prefers prototype 0
    softmax_mass = torch.softmax(logits / 0.5, -1).sum(0)[0].item()
    sk_mass = SinkhornKnopp(10).probs(logits, 0.5).sum(0)[0].item()
    assert softmax_mass > 7.5  # plain softmax: collapse onto one prototype
    assert sk_mass == pytest.approx(2.0, rel=1e-2)  # equipartition: 8 samples / 4 prototypes


def test_sinkhorn_uniform_and_huge_logits_stay_finite():
    assert torch.allclose(SinkhornKnopp(3).probs(torch.zeros(5, 10), 0.04), torch.full((5, 10), 0.1))
    huge = torch.tensor([[1e4, 0.0], [0.0, 1e4]])
    out = SinkhornKnopp(3).probs(huge, 0.04)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.eye(2), atol=1e-6)


def test_koleo_hand_computed():
    def on_circle(degrees):
        return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])

    # nearest chord lengths: 0->60: 1, 60->0: 1, 180->60: 2 sin(60 deg) = sqrt(3)
    loss = KoLeoLoss()(on_circle([0, 60, 180]) * 3.0)  # scale is irrelevant: features are normalised
    assert loss.item() == pytest.approx(-math.log(math.sqrt(3)) / 3, abs=1e-5)
    assert KoLeoLoss()(on_circle([0, 90, 180])).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-5)


def test_koleo_batch_of_one_and_duplicates_are_finite():
    single = torch.randn(1, 8, requires_grad=True)
    loss = KoLeoLoss()(single)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(single.grad).all()
    duplicated = torch.ones(4, 8, requires_grad=True)
    loss = KoLeoLoss()(duplicated)
    # eps inside the distance: ||eps * 1|| + eps for each of the identical features (DINOv2's value)
    assert loss.item() == pytest.approx(-math.log(1e-8 * math.sqrt(8) + 1e-8), rel=1e-5)
    loss.backward()
    assert torch.isfinite(duplicated.grad).all()


# facebookresearch/dinov2 at b8931f7bf91576930313be2c6d6af376033b35f0, dinov2/loss/koleo_loss.py,
# KoLeoLoss()(features) in fp32 on the CPU. Rows 0 and 3 are equal, row 4 is row 1 times 2 (equal once
# normalised): four features with an exact duplicate, and one with a real neighbour.
KOLEO_FEATURES = [
    [-1.0096, -0.2092, -0.1592, 0.5408],
    [0.2147, 0.3554, -0.6538, -0.1296],
    [0.784, 1.4934, -1.2591, 1.5139],
    [-1.0096, -0.2092, -0.1592, 0.5408],
    [0.4294, 0.7108, -1.3076, -0.2592],
]
KOLEO_GOLDEN_DUPLICATES = 13.893701553344727
KOLEO_DISTINCT = [
    [0.3574, -1.2083, -0.0045, 0.6565, -1.2884, 0.3951],
    [0.4299, 0.696, -1.1841, -0.6617, -0.4364, -1.1698],
    [1.7394, -0.4959, 0.329, -0.2586, 1.5835, 1.3204],
    [0.6334, -2.2035, 0.052, 0.6837, 1.004, -0.6179],
]
KOLEO_GOLDEN_DISTINCT = -0.20309516787528992


def test_koleo_equals_dinov2_with_and_without_duplicates():
    features = torch.tensor(KOLEO_FEATURES, requires_grad=True)
    loss = KoLeoLoss()(features)
    assert loss.item() == pytest.approx(KOLEO_GOLDEN_DUPLICATES, rel=1e-5)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    assert KoLeoLoss()(torch.tensor(KOLEO_DISTINCT)).item() == pytest.approx(KOLEO_GOLDEN_DISTINCT, rel=1e-5)


def test_ibot_loss_ignores_unmasked_positions():
    torch.manual_seed(0)
    student = torch.randn(2, 5, 6)
    teacher = torch.softmax(torch.randn(2, 5, 6), -1)
    masks = torch.tensor([[True, False, True, False, False], [False, True, False, False, False]])
    loss_fn = IBOTPatchLoss(0.1)
    base = loss_fn(student, teacher, masks)
    changed = student.clone()
    changed[0, 1, 0] += 10.0  # one logit at an unmasked position
    assert loss_fn(changed, teacher, masks).item() == pytest.approx(base.item(), abs=1e-6)
    changed[0, 2, 0] += 10.0  # one logit at a masked position
    assert loss_fn(changed, teacher, masks).item() != pytest.approx(base.item(), abs=1e-3)


def test_ibot_loss_averages_per_image_then_over_images():
    k = 3
    student = torch.zeros(2, 10, k)  # uniform student: per-token cross-entropy = log k whatever the target
    teacher = torch.softmax(torch.randn(2, 10, k), -1)
    masks = torch.zeros(2, 10, dtype=torch.bool)
    masks[0, 0] = True  # one masked patch
    masks[1, :] = True  # ten masked patches
    # each image's mean is log k; both images weigh the same -> log k
    assert IBOTPatchLoss(0.1)(student, teacher, masks).item() == pytest.approx(math.log(k), rel=1e-6)
    # an image without masked patches counts as 0 (DINOv2 divides by the number of images)
    masks[1, :] = False
    assert IBOTPatchLoss(0.1)(student, teacher, masks).item() == pytest.approx(math.log(k) / 2, rel=1e-6)


def test_ibot_dense_equals_gathered():
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 7, 5), torch.softmax(torch.randn(3, 7, 5), -1)
    masks = torch.rand(3, 7) < 0.4
    loss_fn = IBOTPatchLoss(0.1)
    dense = loss_fn(student, teacher, masks)
    gathered = loss_fn.forward_masked(student[masks], teacher[masks], masks)
    assert dense.item() == pytest.approx(gathered.item(), rel=1e-6)


def _matrix_form(logits: torch.Tensor, temperature: float, num_iters: int) -> torch.Tensor:
    """Sinkhorn–Knopp as alternating in-place normalisations of the whole matrix, in float64."""
    q = torch.exp((logits.double() - logits.double().max()) / temperature).t()  # (K, n)
    num_prototypes, num_samples = q.shape
    q /= q.sum()
    for _ in range(num_iters):
        q /= q.sum(dim=1, keepdim=True) * num_prototypes
        q /= q.sum(dim=0, keepdim=True) * num_samples
    return (q * num_samples).t()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("temperature", "num_iters"), [(0.04, 3), (0.07, 1), (0.07, 10)])
def test_sinkhorn_scaling_vectors_equal_the_matrix_form(dtype, temperature, num_iters):
    torch.manual_seed(0)
    logits = (torch.rand(300, 512) * 2 - 1).to(dtype)  # cosine logits of a weight-normed head: [-1, 1]
    before = logits.clone()
    out = SinkhornKnopp(num_iters).probs(logits, temperature)
    assert out.dtype == torch.float32 and torch.equal(logits, before)  # the input is left alone
    torch.testing.assert_close(
        out.double(), _matrix_form(logits, temperature, num_iters), rtol=1e-5, atol=1e-9
    )


def test_sinkhorn_empty_shard_and_iteration_count():
    assert SinkhornKnopp(3).probs(torch.empty(0, 16), 0.1).shape == (0, 16)
    with pytest.raises(ValueError, match="num_iters >= 1"):
        SinkhornKnopp(0)
