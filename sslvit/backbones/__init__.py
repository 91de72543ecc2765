"""ViT backbones: timm's VisionTransformer with a mask token, registers and any-size inputs."""

from sslvit.backbones.masked_vit import MaskedViT
from sslvit.backbones.presets import VIT_PRESETS, build_vit

__all__ = ["VIT_PRESETS", "MaskedViT", "build_vit"]
