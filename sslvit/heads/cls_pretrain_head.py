"""BEiT v2's CLS-token pretraining head: a shallow transformer over [final CLS, layer-l patch tokens]."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class CLSPretrainHead(nn.Module):
    """CLS-token pretraining decoder (Peng et al., 2022, "BEiT v2", arXiv:2208.06366, §2.3).

    The final CLS token is concatenated with the patch tokens of an intermediate layer ``l`` and run
    through a few fresh transformer blocks; the MIM classifier (shared with the main MIM loss, owned by
    the method) then predicts the masked tokens from the outputs at the patch positions. The patch tokens
    of layer ``l`` carry little image-level information of the upper layers, so the masked tokens can
    only be recovered well if the CLS token aggregates it: this is what the head trains. It is dropped
    after pretraining.

    Args:
        embed_dim: token width D (the backbone's).
        num_heads: attention heads per block.
        depth: number of blocks (2 in the paper).
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        qkv_bias: whether the qkv projection has a bias.
        layerscale_init: initial LayerScale value (the backbone's: 0.1 in BEiT v2); None disables it.
        drop_path_rate: stochastic depth of every head block.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        depth: int = 2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        layerscale_init: float | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"the CLS pretraining head needs at least one block, got depth={depth}")
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                init_values=layerscale_init,
                drop_path=drop_path_rate,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # The ViT initialisation of the backbone (truncated normal 0.02, zero bias).
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, cls: Tensor, patch_tokens: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """Normalised outputs at the patch positions.

        Args:
            cls: ``(B, D)`` final (normalised) CLS token.
            patch_tokens: ``(B, N, D)`` patch tokens of layer ``l`` (block output, before any norm).
            attn_bias: optional additive attention bias ``(1, heads, 1 + N, 1 + N)`` (the backbone's
                shared relative position bias for the ``[CLS, patches]`` layout).

        Returns:
            ``(B, N, D)``.
        """
        x = torch.cat([cls.unsqueeze(1), patch_tokens], dim=1)  # (B, 1 + N, D)
        for block in self.blocks:
            x = block(x, attn_mask=attn_bias)
        return self.norm(x)[:, 1:]
