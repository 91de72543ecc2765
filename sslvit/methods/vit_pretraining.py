"""The pretraining base of the methods that train a ViT backbone and heads (all but the dVAE's)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from sslvit.methods.base import PretrainingModule
from sslvit.methods.optim_config import OptimConfig
from sslvit.utils.fsdp import unwrapped_name


class ViTPretrainingModule(PretrainingModule):
    """A :class:`PretrainingModule` whose trained networks live in ``self.student``, a ``ModuleDict``
    holding the ViT ``backbone`` and the heads a leaf adds.

    Parameter names are those under ``student`` (``backbone.blocks.0.attn.qkv.weight``): the backbone's
    position embedding and CLS / register / mask tokens take no weight decay, and layer-wise lr decay
    counts the backbone's blocks, heads sitting above the last one.

    Args:
        backbone: the trained ViT (a ``MaskedViT``).
        optim: optimiser and schedule settings.
    """

    def __init__(self, backbone: nn.Module, optim: OptimConfig) -> None:
        super().__init__(optim)
        self.student = nn.ModuleDict({"backbone": backbone})
        self.embed_dim: int = int(backbone.embed_dim)  # type: ignore[arg-type]

    def trained_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return self.student.named_parameters()

    def clipping_networks(self) -> dict[str, nn.Module]:
        return {f"student.{name}": net for name, net in self.student.items()}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases, norms (all 1-d parameters), position embedding and the CLS / register / mask tokens."""
        if super().no_weight_decay(name, param):
            return True
        name = unwrapped_name(name)
        backbone: Any = self.student["backbone"]
        exempt = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
        return name.startswith("backbone.") and name.removeprefix("backbone.") in exempt

    def layer_id(self, name: str) -> int:
        backbone: Any = self.student["backbone"]
        name = unwrapped_name(name)
        if name.startswith("backbone."):
            return int(backbone.layer_id(name.removeprefix("backbone.")))
        return len(backbone.blocks) + 1  # heads sit above the last block

    def num_layers(self) -> int:
        return len(self.student["backbone"].blocks)  # type: ignore[arg-type]
