"""Crops of several resolutions through one ViT pass: their tokens packed into one sequence.

Multi-crop students see groups of sequences of different lengths (e.g. 2B global crops of 257 tokens and
8B local crops of 50). Run one pass per group and every linear layer is launched once per group on a
smaller matrix; pack them and the token-wise work (norms, qkv, MLP, residuals) runs once on
all tokens, as in DINOv2's official code. Attention must still stay within each sequence: a
block-diagonal mask over the packed sequence. Because every group holds sequences of one length, that
mask is exactly one dense batched attention per group, so each group's slice of the packed q, k, v goes
to ``scaled_dot_product_attention`` (flash / memory-efficient kernels) with no mask and no padding
(FlexAttention or a masked kernel would spend work on tiles that straddle sequences).

The math is the unpacked block's; only the order of floating-point sums inside the matmuls can differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import Attention, drop_path
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from sslvit.backbones.subset_drop_path import SubsetDropPathBlock, add_rows, kept_count

Branch = Callable[[Tensor, "PackLayout"], Tensor]


@dataclass(frozen=True)
class PackLayout:
    """The groups in a packed ``(tokens, D)`` tensor: ``shapes[i] = (sequences, tokens per sequence)``."""

    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, groups: Sequence[Tensor]) -> PackLayout:
        return cls(tuple((int(g.shape[0]), int(g.shape[1])) for g in groups))

    @property
    def sizes(self) -> list[int]:
        """Tokens in each group."""
        return [b * n for b, n in self.shapes]

    def pack(self, groups: Sequence[Tensor]) -> Tensor:
        """``[(B_i, N_i, D)]`` -> ``(sum B_i N_i, D)``."""
        return torch.cat([g.reshape(-1, g.shape[-1]) for g in groups])

    def unpack(self, x: Tensor) -> list[Tensor]:
        """``(sum B_i N_i, D)`` -> ``[(B_i, N_i, D)]``."""
        return [part.view(b, n, -1) for part, (b, n) in zip(x.split(self.sizes), self.shapes, strict=True)]

    def keep_subset(self, drop_prob: float, device: torch.device) -> tuple[Tensor, Tensor, PackLayout]:
        """A random ``round(B_i (1 - p))`` sequences of each group (at least one), as in ``subset_residual``.

        Returns the kept tokens' indices, their ``(kept tokens, 1)`` scale ``B_i / kept_i`` (which keeps
        the residual unbiased) and the layout of the kept tokens.
        """
        indices, scales, shapes = [], [], []
        offset = 0
        for b, n in self.shapes:
            kept = kept_count(b, drop_prob)
            rows = torch.randperm(b, device=device)[:kept]
            tokens = offset + rows[:, None] * n + torch.arange(n, device=device)
            indices.append(tokens.flatten())
            scales.append(torch.full((kept * n, 1), b / kept, device=device))
            shapes.append((kept, n))
            offset += b * n
        return torch.cat(indices), torch.cat(scales), PackLayout(tuple(shapes))

    def sample_mask(self, drop_prob: float, scale_by_keep: bool, like: Tensor) -> Tensor:
        """timm's ``DropPath`` draw, one Bernoulli per sequence, repeated over its tokens: ``(tokens, 1)``."""
        masks = []
        for b, n in self.shapes:
            keep = drop_path(like.new_ones(b, 1), drop_prob, training=True, scale_by_keep=scale_by_keep)
            masks.append(keep.repeat_interleave(n, dim=0))
        return torch.cat(masks)


def packed_attention(attn: Attention, x: Tensor, layout: PackLayout) -> Tensor:
    """timm's ``Attention`` over packed tokens: qkv on all tokens at once, attention and output projection
    per group."""
    if getattr(attn, "gate", None) is not None:
        raise ValueError("packed attention does not support timm's gated attention")
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x)
    outputs = []
    for part, (b, n) in zip(qkv.split(layout.sizes), layout.shapes, strict=True):
        q, k, v = part.view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.fused_attn:
            dropout = attn.attn_drop.p if attn.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # timm's explicit path, for comparison runs
            y = attn.attn_drop((q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        # Projected per group: the projection keeps its input for backward, and a group's attention
        # output is already a view of SDPA's (kept) result, whereas a concatenation would be a new copy.
        outputs.append(attn.proj(attn.norm(y.transpose(1, 2).reshape(b * n, attn.attn_dim))))
    return attn.proj_drop(torch.cat(outputs))


def _packed_residual(
    x: Tensor, norm: nn.Module, branch: Branch, layout: PackLayout, drop_module: object, subset: bool
) -> Tensor:
    """``x + branch(norm(x))`` with stochastic depth per sequence, skipping dropped ones when ``subset``
    (normalised before the kept tokens are gathered, as in ``subset_residual``)."""
    # The rate is read in training only: read, it becomes a constant of the compiled graph, one graph per
    # block instead of one for all (``sslvit.backbones.compiled_blocks``).
    training = bool(getattr(drop_module, "training", False))
    drop_prob = float(getattr(drop_module, "drop_prob", 0.0)) if training else 0.0
    if drop_prob <= 0.0:
        return x + branch(norm(x), layout)
    if subset:
        index, scale, kept = layout.keep_subset(drop_prob, x.device)
        return add_rows(x, index, branch(norm(x)[index], kept), scale)
    keep = layout.sample_mask(drop_prob, bool(getattr(drop_module, "scale_by_keep", True)), x)
    return x + branch(norm(x), layout) * keep


def packed_block(block: Block, x: Tensor, layout: PackLayout) -> Tensor:
    """One timm pre-norm ViT block on packed tokens ``(tokens, D)``; same parameters, same math."""
    subset = isinstance(block, SubsetDropPathBlock)

    def attention(normed: Tensor, lay: PackLayout) -> Tensor:
        return block.ls1(packed_attention(block.attn, normed, lay))  # type: ignore[arg-type]

    def mlp(normed: Tensor, lay: PackLayout) -> Tensor:
        return block.ls2(block.mlp(normed))

    x = _packed_residual(x, block.norm1, attention, layout, block.drop_path1, subset)
    return _packed_residual(x, block.norm2, mlp, layout, block.drop_path2, subset)
