"""Gram loss and the patch-grid resize of the Gram teacher: hand-computed and official numbers."""

import pytest
import torch

from sslvit.losses import GramLoss
from sslvit.methods.gram_teacher import resize_patch_tokens


def test_gram_loss_by_hand() -> None:
    # Image 1: the student's two patches are orthogonal (Gram = I); the teacher's point the same way
    # (after l2 normalisation (3, 0) is (1, 0): Gram = all ones). Squared difference: 0, 1, 1, 0 -> mean 0.5.
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    teacher = torch.tensor([[[1.0, 0.0], [3.0, 0.0]]])
    assert GramLoss()(student, teacher).item() == pytest.approx(0.5, abs=1e-6)
    # A second image whose Gram matrices agree: the mean over images halves it.
    agree = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    both = GramLoss()(torch.cat([student, agree]), torch.cat([teacher, 5.0 * agree]))
    assert both.item() == pytest.approx(0.25, abs=1e-6)
    # Opposite patches: cosine -1 against +1 -> off-diagonal squared differences of 4 -> mean 2.
    opposite = GramLoss()(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]), teacher)
    assert opposite.item() == pytest.approx(2.0, abs=1e-6)


def test_gram_loss_is_zero_for_the_same_features_at_any_scale() -> None:
    x = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    assert GramLoss()(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert GramLoss()(x, 4.0 * x).item() == pytest.approx(0.0, abs=1e-6)  # l2-normalised first
    assert GramLoss()(x, x.flip(1)).item() > 1e-2  # another patch order is another Gram matrix


def test_gram_loss_equals_the_official_implementation() -> None:
    # facebookresearch/dinov3 at 6876159a11b4df116f30f667f8c9888617df0751, dinov3/loss/gram_loss.py,
    # GramLoss(apply_norm=True, remove_neg=False, remove_only_teacher_neg=False)(s, t, img_level=True) on
    # these inputs gave 0.23660095036029816.
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 6, 5, generator=g), torch.randn(3, 6, 5, generator=g)
    assert GramLoss()(student, teacher).item() == pytest.approx(0.23660095036029816, rel=1e-5)


def test_teacher_features_resized_as_the_official_high_resolution_gram_teacher() -> None:
    # The same commit, SSLMetaArch.get_gram_teacher_output: a 4x4 teacher grid resized to the student's
    # 2x2 with F.interpolate(bicubic, align_corners=False, antialias=False); then its GramLoss.
    g = torch.Generator().manual_seed(0)
    torch.randn(3, 6, 5, generator=g), torch.randn(3, 6, 5, generator=g)  # the test above's draws
    teacher = torch.randn(2, 16, 4, generator=g)
    resized = resize_patch_tokens(teacher, (4, 4), (2, 2), "bicubic", antialias=False)
    assert resized.shape == (2, 4, 4)
    expected_00 = [-0.5621042251586914, 1.0092278718948364, -0.17080214619636536, -0.9446020722389221]
    expected_13 = [0.12463167309761047, -0.7460567355155945, 0.41439199447631836, -0.49946752190589905]
    torch.testing.assert_close(resized[0, 0], torch.tensor(expected_00), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(resized[1, 3], torch.tensor(expected_13), atol=1e-5, rtol=1e-5)
    assert resized.sum().item() == pytest.approx(-1.9506146907806396, abs=1e-4)
    student = torch.randn(2, 4, 4, generator=g)
    assert GramLoss()(student, resized).item() == pytest.approx(0.35905635356903076, rel=1e-5)


def test_resize_keeps_row_major_patch_order() -> None:
    # Feature 0 = the patch's row, feature 1 = 7: rows stay rows, a constant stays constant.
    rows = torch.arange(6.0).repeat_interleave(6)  # a 6x6 grid, row-major
    tokens = torch.stack([rows, torch.full_like(rows, 7.0)], dim=-1)[None]  # (1, 36, 2)
    out = resize_patch_tokens(tokens, (6, 6), (3, 3), "bilinear", antialias=True)
    grid = out[0].reshape(3, 3, 2)
    torch.testing.assert_close(grid[..., 1], torch.full((3, 3), 7.0))
    assert torch.allclose(grid[:, 0, 0], grid[:, 2, 0])  # the same along a row
    assert grid[0, 0, 0] < grid[1, 0, 0] < grid[2, 0, 0]  # increasing down the columns
    assert resize_patch_tokens(tokens, (6, 6), (6, 6), "bicubic", antialias=False) is tokens


def test_only_the_student_gets_a_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 5, 3, generator=g, requires_grad=True)
    teacher = torch.randn(2, 5, 3, generator=g, requires_grad=True)
    GramLoss()(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_mismatched_shapes_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"of one shape, got \(2, 4, 3\) and \(2, 9, 3\)"):
        GramLoss()(torch.zeros(2, 4, 3), torch.zeros(2, 9, 3))
