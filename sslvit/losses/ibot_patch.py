"""iBOT's masked-patch self-distillation loss."""

from __future__ import annotations

import torch
from torch import nn

from sslvit.losses.soft_cross_entropy import positive_temperature, soft_cross_entropy
from sslvit.utils.masked_tokens import gather_masked, true_indices


class IBOTPatchLoss(nn.Module):
    """Masked image modelling as self-distillation (Zhou et al., 2022, arXiv:2111.07832, eq. 2).

    At every masked patch i of image b: ``-sum_k P_t[b,i,k] log softmax(s[b,i] / tau_s)[k]``, averaged
    over the image's masked patches, then over images. Unmasked positions contribute nothing; an image
    without masked patches counts as an image with loss 0 (as in DINOv2's implementation, which divides
    by the number of images).

    Args:
        student_temp: student temperature tau_s (0.1).

    Raises:
        ValueError: ``student_temp`` is not positive.
    """

    def __init__(self, student_temp: float = 0.1) -> None:
        super().__init__()
        self.student_temp = positive_temperature(student_temp)

    def forward(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """Dense form: (B, N, K) student logits and teacher probabilities, (B, N) bool masks."""
        return self.forward_masked(student_logits[masks], teacher_probs[masks], masks)

    def forward_masked(
        self,
        student_logits: torch.Tensor,
        teacher_probs: torch.Tensor,
        masks: torch.Tensor,
        mask_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gathered form: (M, K) rows of the masked tokens only, in ``masks`` order, and (B, N) masks.

        Lets methods run the heads on the M masked tokens alone (much cheaper than all B*N).
        ``mask_indices`` (``true_indices(masks)``, made in the loader) avoids counting the masked tokens
        on the device, a host sync.
        """
        per_token = soft_cross_entropy(student_logits, teacher_probs, self.student_temp)  # (M,), fp32
        masked_per_image = masks.sum(dim=1, keepdim=True).clamp_min(1)  # (B, 1)
        indices = true_indices(masks) if mask_indices is None else mask_indices
        weights = gather_masked(
            (1.0 / masked_per_image).expand_as(masks), indices
        )  # (M,): 1 / its image's M_b
        return (per_token * weights).sum() / masks.shape[0]
