"""Training schedules as pure functions of the optimizer step (or of the epoch).

Pure functions (no state) make resume exact: the value at step ``t`` depends only on ``t`` and the
schedule's arguments, so restoring ``global_step`` restores every schedule. The self-distillation
schedules give, step for step, the values of the arrays that the official DINO, iBOT and DINOv2 code
precomputes (``cosine_scheduler`` and the teacher-temperature ``linspace``); the tests hold them to those
arrays.
"""

from __future__ import annotations

import math


def linspace_at(index: int, count: int, start: float, end: float) -> float:
    """``numpy.linspace(start, end, count)[index]``, held at ``start`` before it and at ``end`` after it.

    The last value, ``end``, sits at ``index = count - 1``; ``linspace`` of one value is ``[start]``; with
    ``count <= 0`` the schedule is ``end`` throughout.
    """
    if count <= 0 or index >= count:
        return end
    if index <= 0 or count == 1:
        return start
    return start + index * ((end - start) / (count - 1))


def cosine_schedule(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up from ``warmup_start`` to ``start``, then a cosine from ``start`` towards ``end``.

    The official DINO / iBOT / BEiT ``cosine_scheduler`` (and DINOv2's ``CosineScheduler``), as a
    function of the step: the warm-up is ``linspace(warmup_start, start, warmup_steps)``, so ``start`` is
    reached at its last step and again at the first cosine step; the cosine part is
    ``end + (start - end) * (1 + cos(pi * i / n)) / 2`` over its ``n = total_steps - warmup_steps`` steps
    ``i = 0 .. n - 1``, so the last step is still a little above ``end`` (a 40-step cosine from 5e-4
    ends at 1.77e-6 for an ``end`` of 1e-6). From ``total_steps`` on the value is ``end`` (DINOv2's).

    Used for the learning rate (10 warm-up epochs, cosine to min_lr), weight decay (0.04 -> 0.4, no
    warm-up) and the teacher momentum (0.996 -> 1).

    Args:
        step: optimizer step, 0-based.
        total_steps: number of optimizer steps in the whole run.
        start: value at the end of the warm-up and at the start of the cosine.
        end: the value the cosine heads for.
        warmup_steps: length of the linear warm-up.
        warmup_start: value at step 0 when there is a warm-up.
    """
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step >= total_steps:
        return end
    if step < warmup_steps:
        return linspace_at(step, warmup_steps, warmup_start, start)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """A half cosine from ``start`` at step 0 to ``end`` at step ``steps - 1``, then ``end``.

    DALL-E's annealing (the dVAE's Gumbel temperature and KL-weight warm-up), which ends on ``end``;
    with ``steps <= 1`` the value is ``end`` throughout.
    """
    if steps <= 1 or step >= steps - 1:
        return end
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / (steps - 1)))


def whole_epochs(value: float, name: str) -> int:
    """``value`` as an int, for a schedule that changes once per epoch; a fraction is an error."""
    if value < 0 or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number of epochs (>= 0), got {value}")
    return int(value)
