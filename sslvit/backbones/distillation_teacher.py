"""The frozen pretrained teacher of DINOv2-style distillation: a ViT with its DINO and iBOT heads."""

from __future__ import annotations

from typing import Any

from torch import nn


class DistillationTeacher(nn.Module):
    """A frozen ViT and the heads it was pretrained with, whose outputs a smaller student learns to match.

    DINOv2 distils its smaller models from the largest one (Oquab et al., 2024, arXiv:2304.07193,
    section 5): the student is trained against the *pretrained* teacher's prototype distributions, so
    the teacher brings its own DINO (CLS) and iBOT (patch) heads; fresh heads on a frozen teacher would be
    random projections that nothing trains. The teacher takes no gradient and is always in eval mode (no
    dropout, no stochastic depth).

    Args:
        backbone: the teacher ViT (a ``MaskedViT``: ``forward_features`` returns ``x_norm_clstoken`` and
            ``x_norm_patchtokens``).
        dino_head: the head of its CLS token.
        ibot_head: the head of its patch tokens; None when it shares ``dino_head`` (iBOT's shared head).
    """

    def __init__(self, backbone: nn.Module, dino_head: nn.Module, ibot_head: nn.Module | None = None) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_features") or not hasattr(backbone, "patch_embed"):
            raise ValueError(f"the teacher backbone must be a ViT; got {type(backbone).__name__}")
        self.backbone: Any = backbone  # MaskedViT: duck-typed
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DistillationTeacher:
        return super().train(False)  # frozen: no dropout / drop path, ever

    @property
    def patch_head(self) -> nn.Module:
        """The head that turns patch tokens into the iBOT loss's prototype scores."""
        return self.dino_head if self.ibot_head is None else self.ibot_head

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.embed_dim)

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_embed.patch_size[0])

    @staticmethod
    def prototypes(head: nn.Module) -> int:
        """The number of prototypes K of a ``DINOHead``."""
        prototypes: Any = head.prototypes
        return int(prototypes.shape[0])
