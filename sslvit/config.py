"""OmegaConf resolvers used by the configs in conf/."""

from __future__ import annotations

from omegaconf import OmegaConf


def _auto_precision() -> str:
    """bf16 mixed precision on GPUs that support it, full fp32 elsewhere (CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def register_resolvers() -> None:
    """Register ``${auto_precision:}`` (idempotent)."""
    if not OmegaConf.has_resolver("auto_precision"):
        OmegaConf.register_new_resolver("auto_precision", _auto_precision)
