"""DINO's cross-view self-distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student views (Caron et al., 2021, arXiv:2104.14294, eq. 3).

    ``L = mean over pairs (t, s), s != t, and over the batch of  -sum_k P_t[k] log P_s[k]``, where
    ``P_t`` are the teacher's target probabilities for global view t (already centred/normalised and
    sharpened by the caller) and ``P_s = softmax(g_s / tau_s)`` the student's for view s. Global views
    come first in the student's list, so pair (t, t) is the same view and is skipped.

    Args:
        student_temp: student temperature tau_s (0.1).
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = student_temp

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """Average cross-view cross-entropy.

        Args:
            student_logits: one (B, K) tensor per student view, global views first.
            teacher_probs: one (B, K) tensor per teacher (global) view.
        """
        if len(student_logits) < 2 and len(teacher_probs) < 2:
            raise ValueError("DINOLoss needs at least two views to form a cross-view pair")
        # (S, B, K) and (T, B, K); log-softmax in fp32 for stability under bf16 autocast.
        student_logp = F.log_softmax(torch.stack(student_logits).float() / self.student_temp, dim=-1)
        targets = torch.stack(teacher_probs).float()
        # (T, S): cross-entropy of every teacher view against every student view, averaged over the batch.
        pair_ce = -torch.einsum("tbk,sbk->ts", targets, student_logp) / targets.shape[1]
        num_teacher, num_student = pair_ce.shape
        same_view = torch.eye(num_teacher, num_student, dtype=torch.bool, device=pair_ce.device)
        return pair_ce.masked_fill(same_view, 0.0).sum() / (num_teacher * num_student - num_teacher)
