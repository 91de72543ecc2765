"""ViT backbone with a learned mask token, register tokens and any-size inputs, built on timm's ViT."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

import torch
from timm.layers import Attention, DropPath
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sslvit.backbones.compiled_blocks import allow_graphs_per_rate, compiled_block_call, compiled_packed_block
from sslvit.backbones.packed import PackLayout, packed_block
from sslvit.backbones.rel_pos_bias import RelativePositionBias
from sslvit.backbones.subset_drop_path import SubsetDropPathBlock

_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.")
# Parameters that sit before the first block (layer 0 for layer-wise lr decay) and after the last one.
_STEM_PREFIXES = ("patch_embed.", "norm_pre.")
_STEM_TOKENS = ("cls_token", "reg_token", "pos_embed", "mask_token")
# The shared relative position bias serves every block; BEiT gives it the top layer's lr.
_TOP_PREFIXES = ("norm.", "fc_norm.", "head.", "attn_pool.", "rel_pos_bias.")


class MaskedViT(VisionTransformer):
    """Vision Transformer for self-supervised pretraining (Dosovitskiy et al., 2021, arXiv:2010.11929).

    A thin subclass of timm's ``VisionTransformer`` (its blocks, patch embedding and position-embedding
    interpolation are reused unchanged) that adds what the SSL methods need:

    * a learned ``mask_token`` that replaces masked patch embeddings *before* position embeddings are
      added (BEiT, arXiv:2106.08254; iBOT, arXiv:2111.07832; DINOv2, arXiv:2304.07193);
    * register tokens (Darcet et al., 2024, "Vision Transformers Need Registers", arXiv:2309.16588);
    * LayerScale (Touvron et al., 2021, arXiv:2103.17239) and stochastic depth;
    * optionally a relative position bias shared by all blocks (BEiT), added to the attention logits
      through timm's additive ``attn_mask``; without it the blocks run exactly as in timm;
    * inputs of any size that is a multiple of the patch size, square or not: the learned absolute
      position embedding is resampled bicubically to the input's patch grid on every call;
    * DINOv2-style outputs (``forward_features`` dict, ``get_intermediate_layers``) and the DINO
      last-block self-attention (Caron et al., 2021, arXiv:2104.14294).

    The state dict (minus ``mask_token``) loads into ``timm.create_model("vit_*_patch*_224",
    num_classes=0, reg_tokens=R)`` with ``strict=True``, which is the export path.

    Token layout: ``[CLS, R registers, N patches]``, so ``T = 1 + R + N``. The position embedding has an
    entry for every prefix token too (timm's default layout), which keeps the export drop-in.

    Args:
        img_size: Native input size; the position embedding is stored for this patch grid.
        patch_size: Side of the square patches.
        in_chans: Number of input image channels.
        embed_dim: Token width D.
        depth: Number of transformer blocks.
        num_heads: Attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        qkv_bias: Whether the qkv projection has a bias.
        num_register_tokens: Number of register tokens R (DINOv2 uses 4; 0 disables them).
        layerscale_init: Initial LayerScale value (1e-5 in DINOv2, 0.1 in BEiT); ``None`` disables it.
        drop_path_rate: Stochastic-depth rate of the last block (linearly increasing from 0), or of every
            block with ``drop_path_uniform``.
        drop_path_uniform: Every block drops with ``drop_path_rate`` (the official DINOv2 recipe) instead
            of timm's linear increase from 0 at the first block.
        rel_pos_bias: Add a relative position bias shared across blocks (BEiT pretraining); it covers
            grids up to the native one.
        fused_attn: Attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient
            kernels, timm's default); False runs the explicit ``softmax(q k^T) v`` (for comparison).
        compile_blocks: Run every block through one ``torch.compile``d function (a speed switch; the
            state dict is unchanged; ``sslvit.backbones.compiled_blocks``). Compilation takes seconds to
            minutes on the first steps; with linearly increasing drop rates, one graph per block and crop
            size in training.
        drop_path_subset: Stochastic depth computes the residual branches on the kept samples only
            (``SubsetDropPathBlock``: a fixed-size random subset, rescaled) instead of zeroing the dropped
            ones after computing them (timm's ``DropPath``). Same expectation, less compute; a speed
            switch with no effect when ``drop_path_rate`` is 0 or outside training.
        pack_crops: ``forward_features_list`` runs crops of several resolutions as one packed token
            sequence with per-crop attention (``sslvit.backbones.packed``) instead of one pass per
            resolution. A speed switch: same parameters, same outputs up to float rounding.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_register_tokens: int = 0,
        layerscale_init: float | None = None,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        rel_pos_bias: bool = False,
        fused_attn: bool = True,
        compile_blocks: bool = False,
        drop_path_subset: bool = True,
        pack_crops: bool = False,
    ) -> None:
        if num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {num_register_tokens}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % patch_size for s in sizes):
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            init_values=layerscale_init,
            class_token=True,
            reg_tokens=num_register_tokens,
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            block_fn=SubsetDropPathBlock if drop_path_subset else Block,
        )
        if drop_path_uniform and drop_path_rate > 0:
            for block in self.blocks:  # timm built linearly increasing rates; DropPath holds no state
                cast(Block, block).drop_path1 = DropPath(drop_path_rate)
                cast(Block, block).drop_path2 = DropPath(drop_path_rate)
        # Zero init as in iBOT / DINOv2: a masked patch starts out as "position only".
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.rel_pos_bias: RelativePositionBias | None = None
        if rel_pos_bias:
            grid = tuple(int(s) for s in self.patch_embed.grid_size)
            self.rel_pos_bias = RelativePositionBias((grid[0], grid[1]), num_heads, self.num_prefix_tokens)
        for block in self.blocks:  # timm reads fused_attn on every call (Final only for TorchScript)
            cast(Attention, cast(Block, block).attn).fused_attn = fused_attn  # type: ignore[misc]
        self.compile_blocks = compile_blocks
        if compile_blocks:
            allow_graphs_per_rate(self.blocks)
        self.pack_crops = pack_crops

    # ----------------------------------------------------------------------------------------------
    # Properties and parameter-name helpers
    # ----------------------------------------------------------------------------------------------
    @property
    def num_register_tokens(self) -> int:
        """Number of register tokens R."""
        return int(self.num_reg_tokens)

    @property
    def patch_size(self) -> int:
        """Side of the (square) patches in pixels."""
        return int(self.patch_embed.patch_size[0])

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of an input of ``height x width`` pixels."""
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height}x{width} is not a multiple of patch_size {p}")
        return height // p, width // p

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the token / position parameters that take no weight decay (only those that exist)."""
        names = {"pos_embed", "cls_token", "reg_token", "mask_token", "rel_pos_bias.table"}
        return {name for name, _ in self.named_parameters() if name in names}

    def layer_id(self, param_name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay (BEiT, arXiv:2106.08254).

        Args:
            param_name: Name relative to this module, as in ``self.named_parameters()``.

        Returns:
            0 for the patch embedding and the CLS / register / mask tokens and position embedding,
            ``i + 1`` for ``blocks.i``, ``depth + 1`` for the final norm and anything after it.
        """
        match = _BLOCK_PARAM.match(param_name)
        if match:
            return int(match.group(1)) + 1
        if param_name in _STEM_TOKENS or param_name.startswith(_STEM_PREFIXES):
            return 0
        if param_name.startswith(_TOP_PREFIXES):
            return len(self.blocks) + 1
        raise ValueError(f"unknown MaskedViT parameter {param_name!r} (pass names relative to the backbone)")

    # ----------------------------------------------------------------------------------------------
    # Forward passes
    # ----------------------------------------------------------------------------------------------
    def prepare_tokens(self, images: Tensor, masks: Tensor | None = None) -> Tensor:
        """Patch-embed, apply the mask token, add (interpolated) position embeddings, prepend prefix tokens.

        Args:
            images: ``(B, C, H, W)`` with H and W multiples of the patch size.
            masks: Optional ``(B, N)`` bool, True = masked, in row-major patch order (N = h * w).

        Returns:
            Tokens ``(B, 1 + R + N, D)`` ready for the first block.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        batch, _, height, width = images.shape
        h, w = self.grid_size(height, width)
        x = self.patch_embed(images)  # (B, h, w, D): timm defers flattening until the pos embed
        if masks is not None:
            if masks.dtype != torch.bool:
                raise TypeError(f"masks must be a bool tensor (True = masked), got dtype {masks.dtype}")
            if masks.shape != (batch, h * w):
                raise ValueError(
                    f"masks shape {tuple(masks.shape)} does not match images: expected ({batch}, {h * w})"
                )
            # Replace before the position embedding so the model still knows *where* the hole is.
            x = torch.where(masks.view(batch, h, w, 1), self.mask_token.to(x.dtype).view(1, 1, 1, -1), x)
        x = self._pos_embed(x)  # timm: prepend CLS/registers, add the pos embed resampled to (h, w)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def attention_bias(self, height: int, width: int) -> Tensor | None:
        """The ``(1, heads, T, T)`` relative position bias for an input of this size, or None."""
        if self.rel_pos_bias is None:
            return None
        return self.rel_pos_bias(self.grid_size(height, width))

    def _run_blocks(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.compile_blocks and not (self.grad_checkpointing and self.training):
            run_block = compiled_block_call()
            for block in self.blocks:
                x = run_block(block, x, bias)
            return x
        if bias is None:  # timm's own path, unchanged
            if self.grad_checkpointing and not torch.jit.is_scripting():
                return checkpoint_seq(self.blocks, x)
            return self.blocks(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, bias, use_reentrant=False)
            else:
                x = block(x, attn_mask=bias)
        return x

    def forward_features(  # type: ignore[override]
        self, images: Tensor, masks: Tensor | None = None
    ) -> dict[str, Tensor | None]:
        """Run the backbone and split the normalised tokens (keys as in the DINOv2 hub models).

        Returns:
            ``x_norm_clstoken (B, D)``, ``x_norm_regtokens (B, R, D)``, ``x_norm_patchtokens (B, N, D)``,
            ``x_prenorm (B, T, D)`` (last block output before the final norm) and ``masks`` (as given).
        """
        bias = self.attention_bias(images.shape[-2], images.shape[-1])
        x_prenorm = self._run_blocks(self.prepare_tokens(images, masks), bias)
        return self._split_outputs(x_prenorm, self.norm(x_prenorm), masks)

    def forward_features_list(
        self, images: Sequence[Tensor], masks: Sequence[Tensor | None] | None = None
    ) -> list[dict[str, Tensor | None]]:
        """``forward_features`` of several batches (e.g. global and local crops), one dict each.

        With ``pack_crops`` every batch's tokens run through the blocks as one packed sequence (attention
        stays within each image); otherwise one pass per batch.
        """
        masks = list(masks) if masks is not None else [None] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"got {len(images)} image batches but {len(masks)} masks")
        if not self.pack_crops or len(images) < 2:
            return [self.forward_features(x, m) for x, m in zip(images, masks, strict=True)]
        if self.rel_pos_bias is not None:
            raise ValueError("pack_crops does not support rel_pos_bias (a per-resolution attention bias)")
        tokens = [self.prepare_tokens(x, m) for x, m in zip(images, masks, strict=True)]
        layout = PackLayout.of(tokens)
        x_prenorm = self._run_packed_blocks(layout.pack(tokens), layout)
        return [
            self._split_outputs(prenorm, norm, m)
            for prenorm, norm, m in zip(
                layout.unpack(x_prenorm), layout.unpack(self.norm(x_prenorm)), masks, strict=True
            )
        ]

    def _run_packed_blocks(self, x: Tensor, layout: PackLayout) -> Tensor:
        checkpointed = self.grad_checkpointing and self.training
        run = compiled_packed_block() if self.compile_blocks and not checkpointed else packed_block
        for block in self.blocks:
            if checkpointed:
                x = checkpoint(packed_block, block, x, layout, use_reentrant=False)
            else:
                x = run(cast(Block, block), x, layout)
        return x

    def _split_outputs(
        self, x_prenorm: Tensor, x_norm: Tensor, masks: Tensor | None
    ) -> dict[str, Tensor | None]:
        start = self.num_prefix_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1:start],
            "x_norm_patchtokens": x_norm[:, start:],
            "x_prenorm": x_prenorm,
            "masks": masks,
        }

    def forward(self, images: Tensor, masks: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """Normalised CLS token ``(B, D)``."""
        cls = self.forward_features(images, masks)["x_norm_clstoken"]
        assert cls is not None
        return cls

    def get_intermediate_layers(  # type: ignore[override]
        self, images: Tensor, n: int | Sequence[int] = 1, norm: bool = True
    ) -> list[tuple[Tensor, Tensor]]:
        """Patch and CLS tokens of several blocks (DINOv2's API; DINO's linear probe uses the last 4 CLS).

        Args:
            images: ``(B, C, H, W)``.
            n: The last ``n`` blocks if an int, else these block indices (negative counts from the end).
            norm: Apply the final norm to each output.

        Returns:
            One ``(patch_tokens (B, N, D), cls (B, D))`` per selected block, in block order.
        """
        depth = len(self.blocks)
        indices = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        if (isinstance(n, int) and not 1 <= n <= depth) or any(not -depth <= i < depth for i in indices):
            raise ValueError(f"n={n} selects blocks outside 0..{depth - 1}")
        x = self.prepare_tokens(images)
        bias = self.attention_bias(images.shape[-2], images.shape[-1])
        outputs: dict[int, Tensor] = {}
        wanted = {i % depth for i in indices}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            x = block(x, attn_mask=bias)
            if i in wanted:
                outputs[i] = self.norm(x) if norm else x
        start = self.num_prefix_tokens
        return [(outputs[i % depth][:, start:], outputs[i % depth][:, 0]) for i in indices]

    @torch.no_grad()
    def get_last_selfattention(self, images: Tensor) -> Tensor:
        """Softmax attention weights of the last block, ``(B, heads, T, T)`` (DINO's attention maps)."""
        x = self.prepare_tokens(images)
        bias = self.attention_bias(images.shape[-2], images.shape[-1])
        for block in self.blocks[:-1]:
            x = block(x, attn_mask=bias)
        last = cast(Block, self.blocks[-1])
        attn = cast(Attention, last.attn)
        y = last.norm1(x)
        batch, tokens, _ = y.shape
        # Same projection, q/k norm and scale as timm's Attention; only the weights are kept.
        qkv = attn.qkv(y).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, T, head_dim)
        logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B, heads, T, T)
        return (logits if bias is None else logits + bias).softmax(dim=-1)
