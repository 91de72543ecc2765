"""What the masked-image-modelling methods (BEiT, BEiT v2) hand to evaluation: the CLS token or the
mean patch token of their backbone."""

from __future__ import annotations

from typing import Any

import torch

EVAL_FEATURES = ("mean_patch", "cls")


def check_eval_features(kind: str) -> str:
    """``kind`` itself, or one clear error if it is none of :data:`EVAL_FEATURES`."""
    if kind not in EVAL_FEATURES:
        raise ValueError(f"eval_features must be one of {EVAL_FEATURES}, got {kind!r}")
    return kind


def eval_features(backbone: Any, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,D) evaluation features: the final CLS token (``cls``) or the mean patch token (``mean_patch``)."""
    out = backbone.forward_features(images)
    if kind == "cls":
        return out["x_norm_clstoken"]
    return out["x_norm_patchtokens"].mean(dim=1)
