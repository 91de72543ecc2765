"""The linear classifier of masked image modelling over a tokenizer's vocabulary (BEiT, BEiT v2)."""

from __future__ import annotations

from timm.layers import trunc_normal_
from torch import nn


def mim_classifier(embed_dim: int, vocab_size: int) -> nn.Linear:
    """A linear softmax classifier over ``vocab_size`` visual tokens (truncated-normal 0.02, zero bias).

    The initialisation of BEiT (Bao et al., 2022, arXiv:2106.08254) for its MIM head.
    """
    head = nn.Linear(embed_dim, vocab_size)
    trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
