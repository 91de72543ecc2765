"""DINO's cross-view self-distillation loss."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.losses.soft_cross_entropy import positive_temperature, soft_cross_entropy


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student views (Caron et al., 2021, arXiv:2104.14294, eq. 3).

    ``L = mean over pairs (t, s), s != t, and over the batch of  -sum_k P_t[k] log P_s[k]``, where
    ``P_t`` are the teacher's target probabilities for global view t (already centred/normalised and
    sharpened by the caller) and ``P_s = softmax(g_s / tau_s)`` the student's for view s. Global views
    come first in the student's list, so pair (t, t) is the same view and is skipped.

    Args:
        student_temp: student temperature tau_s (0.1).

    Raises:
        ValueError: ``student_temp`` is not positive.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = positive_temperature(student_temp)

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """Average cross-view cross-entropy.

        Args:
            student_logits: one (B, K) tensor per student view, global views first.
            teacher_probs: one (B, K) tensor per teacher (global) view.
        """
        if len(student_logits) < 2 and len(teacher_probs) < 2:
            raise ValueError("DINOLoss needs at least two views to form a cross-view pair")
        # Sum over pairs = sum over student views s of CE(s, sum of the teacher views t != s), since the
        # cross-entropy is linear in its target: one fused, chunked pass per student view and no
        # (views, B, K) fp32 log-softmax kept for backward (soft_cross_entropy).
        num_teacher, num_student = len(teacher_probs), len(student_logits)
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for s, logits in enumerate(student_logits):
            others = [p for t, p in enumerate(teacher_probs) if t != s]
            if not others:
                continue
            target = others[0].float() if len(others) == 1 else torch.stack(others).float().sum(0)
            total = total + soft_cross_entropy(logits, target, self.student_temp).sum()
        num_pairs = num_teacher * num_student - min(num_teacher, num_student)
        return total / (num_pairs * student_logits[0].shape[0])
