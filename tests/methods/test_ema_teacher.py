"""The EMA teacher on its own: the copy, the update arithmetic, a skipped step, eval mode, momentum."""

import pytest
import torch
from torch import nn

from sslvit.methods.ema_teacher import EMATeacher


def student() -> nn.ModuleDict:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))  # dropout: eval mode is visible
    return nn.ModuleDict({"backbone": backbone, "head": nn.Linear(4, 2)})


def fill(student: nn.ModuleDict, teacher: EMATeacher, student_value: float, teacher_value: float) -> None:
    with torch.no_grad():
        for p in student.parameters():
            p.fill_(student_value)
        for p in teacher.parameters():
            p.fill_(teacher_value)


def test_a_frozen_copy_with_the_students_keys():
    net = student()
    teacher = EMATeacher(net)
    assert list(teacher.state_dict()) == list(net.state_dict())  # checkpoints: teacher.backbone.*
    for (name, t), s in zip(teacher.named_parameters(), net.parameters(), strict=True):
        assert torch.equal(t, s) and t is not s, name
        assert not t.requires_grad


def test_ema_arithmetic():
    net = student()
    teacher = EMATeacher(net)
    fill(net, teacher, 3.0, 1.0)
    teacher.ema_update(net, momentum=0.75)
    for t in teacher.parameters():
        assert torch.allclose(t, torch.full_like(t, 0.75 * 1.0 + 0.25 * 3.0))
    teacher.ema_update(net, momentum=0.75, applied=torch.tensor(1.0))  # an applied step: the same
    for t in teacher.parameters():
        assert torch.allclose(t, torch.full_like(t, 0.75 * 1.5 + 0.25 * 3.0))


def test_no_update_after_a_skipped_step():
    net = student()
    teacher = EMATeacher(net)
    fill(net, teacher, 3.0, 1.0)
    teacher.ema_update(net, momentum=0.5, applied=torch.tensor(0.0))
    for t in teacher.parameters():
        assert torch.equal(t, torch.ones_like(t))


def test_always_in_eval_mode():
    net = student()
    holder = nn.ModuleDict({"student": net, "teacher": EMATeacher(net)})
    holder.train()
    assert net.training and net["backbone"][1].training
    assert not any(m.training for m in holder["teacher"].modules())


def test_momentum_cosine_from_start_towards_end():
    teacher = EMATeacher(student(), momentum=0.996, momentum_end=1.0)
    # facebookresearch/dino at 7c446df5b9f45747937fb0d72314eb9f7b66930a, utils.cosine_scheduler(0.996, 1,
    # 5, 10): 50 steps; the half-way value is the mean, the last one stays below 1
    assert teacher.momentum(0, 50) == pytest.approx(0.996, rel=1e-12)
    assert teacher.momentum(25, 50) == pytest.approx(0.998, rel=1e-12)
    assert teacher.momentum(49, 50) == pytest.approx(0.9999960534568565, rel=1e-12)
    assert teacher.momentum(50, 50) == 1.0  # past the last step: the end value
