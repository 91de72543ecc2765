"""ViT backbones: timm's VisionTransformer with a mask token, registers and any-size inputs.

The named sizes (test, tiny, small, base, large) are defined in conf/backbone/vit_<size>.yaml only.
"""

from sslvit.backbones.feature_teacher import FeatureTeacher
from sslvit.backbones.masked_vit import MaskedViT

__all__ = ["FeatureTeacher", "MaskedViT"]
