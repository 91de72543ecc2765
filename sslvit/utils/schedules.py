"""Training schedules as pure functions of the optimizer step.

Pure functions (no state) make resume exact: the value at step ``t`` depends only on ``t`` and the
schedule's arguments, so restoring ``global_step`` restores every schedule.
"""

from __future__ import annotations

import math


def cosine_schedule(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up from ``warmup_start`` to ``start``, then a half cosine from ``start`` to ``end``.

    Used for the learning rate (DINO: 10 warm-up epochs, cosine to min_lr), weight decay (0.04 -> 0.4,
    no warm-up) and the teacher momentum (0.996 -> 1).

    Args:
        step: optimizer step, 0-based.
        total_steps: number of optimizer steps in the whole run; the value reaches ``end`` at the last step.
        start: value right after warm-up.
        end: value at ``total_steps - 1`` and after.
        warmup_steps: length of the linear warm-up.
        warmup_start: value at step 0 when there is a warm-up.
    """
    warmup_steps = max(0, min(warmup_steps, total_steps))
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    cosine_steps = total_steps - warmup_steps
    if cosine_steps <= 1:
        return end
    progress = min(1.0, (step - warmup_steps) / (cosine_steps - 1))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def linear_warmup(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ramp from ``start`` to ``end`` over ``warmup_steps``, then constant at ``end``.

    DINO's teacher temperature: 0.04 -> 0.07 over the first 30 epochs, then 0.07.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
