"""Masked image modelling as classification of visual tokens (BEiT's pretraining loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MIMCrossEntropy(nn.Module):
    """Cross-entropy between predicted and tokenizer token ids at the masked patches only.

    Bao et al., 2022 (BEiT, arXiv:2106.08254), eq. 1: ``max sum_{i in M} log p(z_i | x^M)``, the average
    being taken over every masked patch of the batch. Unmasked positions take no part: their logits
    and targets are never read.
    """

    def forward(
        self, logits: torch.Tensor, target_ids: torch.Tensor, masks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss over masked positions.

        Args:
            logits: ``(B, N, K)`` for every patch with ``masks``, or ``(M, K)`` already gathered at the
                M masked patches (``masks`` None; cheaper: the classifier runs on masked tokens only).
            target_ids: ``(B, N)`` or ``(M,)`` int64 tokenizer ids, laid out like ``logits``.
            masks: ``(B, N)`` bool, True = masked; None for gathered inputs.
        """
        if masks is not None:
            if masks.shape != target_ids.shape or masks.shape != logits.shape[:-1]:
                raise ValueError(
                    f"masks {tuple(masks.shape)}, targets {tuple(target_ids.shape)} and logits "
                    f"{tuple(logits.shape)} do not describe the same patches"
                )
            logits, target_ids = logits[masks], target_ids[masks]
        if logits.shape[0] == 0:  # nothing masked: no signal, but a graph-connected zero
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target_ids)

    @staticmethod
    @torch.no_grad()
    def accuracy(logits: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """Percent of gathered ``(M, K)`` predictions whose argmax is the target id."""
        if logits.shape[0] == 0:
            return logits.new_zeros(())
        return 100.0 * (logits.argmax(dim=-1) == target_ids).float().mean()
