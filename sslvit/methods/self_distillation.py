"""The common part of the methods that learn from an EMA teacher of themselves (DINO, iBOT, DINOv2)."""

from __future__ import annotations

import torch

from sslvit.methods.ema_teacher import EMATeacher
from sslvit.methods.vit_pretraining import ViTPretrainingModule
from sslvit.utils.fsdp import sharded_root


class SelfDistillationModule(ViTPretrainingModule):
    """A :class:`ViTPretrainingModule` with an :class:`EMATeacher` of its student.

    A leaf builds its heads into ``self.student``, then calls :meth:`build_teacher`. The teacher's
    momentum is one of the schedules (logged as ``sched/momentum``), the teacher follows the student
    once per optimizer step (not at all after a step the step guard skipped, decided on the device),
    and evaluation reads the teacher backbone's CLS features.
    """

    teacher: EMATeacher

    def build_teacher(self, momentum: float, momentum_end: float) -> None:
        """Copy the complete student (call after the heads are built)."""
        self.teacher = EMATeacher(self.student, momentum, momentum_end)

    def method_schedules(self, step: int) -> dict[str, float]:
        return {"momentum": self.teacher.momentum(step, self.total_steps)}

    def on_optimizer_step_done(self, values: dict[str, float]) -> None:
        self.teacher.ema_update(
            self.student, values["momentum"], self.step_guard.applied, sharded_root=sharded_root(self.trainer)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) images -> (B,D) teacher CLS features (evaluation features)."""
        return self.teacher["backbone"](images)
