"""Named ViT sizes (DeiT / ViT widths) and a one-line builder for them."""

from __future__ import annotations

from typing import Any

from sslvit.backbones.masked_vit import MaskedViT

# embed_dim / depth / num_heads. "test" is a deliberately tiny network for unit tests and CI runs;
# the others follow DeiT (tiny, small) and ViT (base, large), as used by DINO, iBOT, BEiT and DINOv2.
VIT_PRESETS: dict[str, dict[str, int]] = {
    "test": {"embed_dim": 48, "depth": 2, "num_heads": 2},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def build_vit(size: str, **overrides: Any) -> MaskedViT:
    """Build a ``MaskedViT`` of a named size.

    Args:
        size: One of ``VIT_PRESETS`` (``test``, ``tiny``, ``small``, ``base``, ``large``).
        **overrides: Any other ``MaskedViT`` argument (``patch_size``, ``img_size``,
            ``num_register_tokens``, ...); these also win over the preset's own values.

    Returns:
        The freshly initialised backbone.
    """
    if size not in VIT_PRESETS:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_PRESETS)}")
    return MaskedViT(**{**VIT_PRESETS[size], **overrides})
