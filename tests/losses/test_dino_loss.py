import math

import pytest
import torch

from sslvit.losses import Centering, DINOLoss


def _log_softmax(values: list[float], temp: float) -> list[float]:
    scaled = [v / temp for v in values]
    log_z = math.log(sum(math.exp(s) for s in scaled))
    return [s - log_z for s in scaled]


def test_dino_loss_matches_hand_computation():
    # B = 1, K = 2, 2 teacher (global) views, 3 student views (2 global + 1 local).
    teacher = [[0.9, 0.1], [0.2, 0.8]]
    student = [[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]
    temp = 0.1
    pairs = []
    for t, q in enumerate(teacher):
        for s, logits in enumerate(student):
            if s == t:
                continue
            logp = _log_softmax(logits, temp)
            pairs.append(-sum(qk * lk for qk, lk in zip(q, logp)))
    expected = sum(pairs) / len(pairs)  # 4 pairs: (0,1) (0,2) (1,0) (1,2)
    assert len(pairs) == 4

    loss = DINOLoss(student_temp=temp)(
        [torch.tensor([row]) for row in student], [torch.tensor([row]) for row in teacher]
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_averages_over_batch():
    torch.manual_seed(0)
    student = [torch.randn(4, 8) for _ in range(3)]
    teacher = [torch.softmax(torch.randn(4, 8), -1) for _ in range(2)]
    loss_fn = DINOLoss(0.1)
    per_image = [loss_fn([s[i : i + 1] for s in student], [t[i : i + 1] for t in teacher]) for i in range(4)]
    assert loss_fn(student, teacher).item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_centering_update_and_probs():
    center = Centering(out_dim=3, momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    probs = center.probs(logits, temperature=1.0)  # center is 0 before the first update
    assert torch.allclose(probs, torch.softmax(logits, -1))
    center.update(logits)
    # c = 0.9 * 0 + 0.1 * mean = 0.1 * [2, 2, 2]
    assert torch.allclose(center.center, torch.tensor([[0.2, 0.2, 0.2]]))
    center.update(torch.tensor([[0.0, 0.0, 10.0]]))
    assert torch.allclose(center.center, torch.tensor([[0.18, 0.18, 1.18]]))
    # centred + sharpened: (logit - c) / T
    p = center.probs(torch.tensor([[0.0, 0.0, 0.0]]), temperature=0.5)
    expected = torch.softmax(-torch.tensor([[0.18, 0.18, 1.18]]) / 0.5, -1)
    assert torch.allclose(p, expected)
