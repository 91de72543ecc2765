import itertools

import pytest

from sslvit.utils.schedules import cosine_schedule, linear_warmup


def test_cosine_schedule_end_points_and_warmup():
    total, warm = 100, 10
    assert cosine_schedule(0, total, 1.0, 0.1, warm) == pytest.approx(0.0)
    assert cosine_schedule(5, total, 1.0, 0.1, warm) == pytest.approx(0.5)
    assert cosine_schedule(warm, total, 1.0, 0.1, warm) == pytest.approx(1.0)
    assert cosine_schedule(total - 1, total, 1.0, 0.1, warm) == pytest.approx(0.1)
    assert cosine_schedule(total + 50, total, 1.0, 0.1, warm) == pytest.approx(0.1)
    # midpoint of the cosine part is the mean of start and end
    mid = warm + (total - warm - 1) / 2
    assert cosine_schedule(int(mid), total, 1.0, 0.0, warm) == pytest.approx(0.5, abs=0.02)


def test_cosine_schedule_is_monotone_for_momentum():
    values = [cosine_schedule(s, 50, 0.996, 1.0) for s in range(50)]
    assert values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_linear_warmup_teacher_temperature():
    assert linear_warmup(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert linear_warmup(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert linear_warmup(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(1000, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert linear_warmup(0, 0, 0.04, 0.07) == pytest.approx(0.07)
