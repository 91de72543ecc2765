"""Stochastic depth that skips the dropped samples' compute instead of multiplying it by zero."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import Tensor


def kept_count(batch: int, drop_prob: float) -> int:
    """How many of ``batch`` samples a branch runs on: ``round(batch * (1 - drop_prob))``, at least one."""
    return max(1, round(batch * (1.0 - drop_prob)))


class _AddRows(torch.autograd.Function):
    """``x.index_add(0, index, rows * scale)`` whose backward keeps only ``index`` and ``scale``.

    ``torch.index_add``'s own backward keeps the whole ``source`` (it reads its shape), an fp32 copy of
    the branch output per residual branch that would cost more memory than the skipped samples save.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, index: Tensor, rows: Tensor, scale: Tensor | float) -> Tensor:
        ctx.rows_dtype = rows.dtype
        if isinstance(scale, Tensor):
            ctx.save_for_backward(index, scale)
            return x.index_add(0, index, rows.to(x.dtype) * scale)
        ctx.save_for_backward(index)
        ctx.scale = scale
        return x.index_add(0, index, rows.to(x.dtype), alpha=scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, Tensor, None]:
        index, *scale_tensor = ctx.saved_tensors
        scale = scale_tensor[0] if scale_tensor else ctx.scale
        return grad, None, (grad.index_select(0, index) * scale).to(ctx.rows_dtype), None


def add_rows(x: Tensor, index: Tensor, rows: Tensor, scale: Tensor | float) -> Tensor:
    """``x`` with ``rows * scale`` added at rows ``index`` (a float, or a tensor broadcasting to ``rows``)."""
    return _AddRows.apply(x, index, rows, scale)


def subset_residual(
    x: Tensor,
    branch: Callable[[Tensor], Tensor],
    drop_prob: float,
    norm: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``x + branch(norm(x))`` with the branch computed on a random ``(1 - drop_prob)`` share of the batch.

    Stochastic depth (Huang et al., 2016) as timm's ``DropPath`` does it computes the residual branch for
    every sample and zeroes a random ``drop_prob`` of them, so the dropped samples cost as much as the
    kept ones. Here the branch runs on ``round(B * (1 - drop_prob))`` randomly chosen samples (at least
    one) and is scattered back with ``index_add``, scaled by ``B / kept`` so that the
    expectation over the draw is ``x + branch(x)``, as with ``DropPath``'s ``1 / (1 - p)`` (the scheme of
    DINOv2's ``drop_add_residual_stochastic_depth``). The number kept is fixed rather than binomial, which
    keeps shapes static for ``torch.compile``. A batch of one keeps its sample.

    ``norm`` (the block's pre-norm, per token) runs on the whole batch *before* the kept samples are
    gathered: it then keeps the residual stream itself for its backward, which is alive anyway, instead
    of a gathered fp32 copy of it. Normalising first and gathering after equal gathering first.
    """
    batch = x.shape[0]
    kept = kept_count(batch, drop_prob)
    index = torch.randperm(batch, device=x.device)[:kept]
    residual = branch((x if norm is None else norm(x))[index])
    return add_rows(x, index, residual, batch / kept)


class SubsetDropPathBlock(Block):
    """timm's pre-norm ViT block whose stochastic depth skips the dropped samples (``subset_residual``).

    The parameters and state dict are exactly timm's ``Block``; outside training, or with a drop
    probability of 0, the forward pass is timm's own (outside training, without calling the drop-path
    modules).
    """

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if not self.training:
            # timm's forward without the drop-path modules, which are the identity here: reading their rate
            # would make it a constant of a compiled graph, one graph per block instead of one for all.
            x = x + self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
            return x + self.ls2(self.mlp(self.norm2(x)))
        drop_prob = float(getattr(self.drop_path1, "drop_prob", 0.0))
        if drop_prob <= 0.0:
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[0] != 1:
            # A per-sample mask would have to be gathered with the kept samples; nothing here uses one.
            raise ValueError(f"per-sample attention masks are not supported, got {tuple(attn_mask.shape)}")

        def attention(normed: Tensor) -> Tensor:
            return self.ls1(self.attn(normed, attn_mask=attn_mask, is_causal=is_causal))

        def mlp(normed: Tensor) -> Tensor:
            return self.ls2(self.mlp(normed))

        x = subset_residual(x, attention, drop_prob, norm=self.norm1)
        return subset_residual(x, mlp, drop_prob, norm=self.norm2)
