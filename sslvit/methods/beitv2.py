"""BEiT v2 (stage 2) as a LightningModule: MIM over VQ-KD tokens plus CLS-token pretraining."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.data.batch import MaskedImageBatch
from sslvit.heads import CLSPretrainHead, mim_classifier
from sslvit.losses import MIMCrossEntropy
from sslvit.methods.eval_features import check_eval_features, eval_features
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.vit_pretraining import ViTPretrainingModule
from sslvit.tokenizers.targets import check_tokenizer, global_distinct_codes, tokenizer_target_ids
from sslvit.utils.masked_tokens import gather_masked


class BEiTv2(ViTPretrainingModule):
    """Masked image modelling with vector-quantised visual tokenizers (Peng et al., 2022,
    "BEiT v2", arXiv:2208.06366).

    A frozen VQ-KD tokenizer (stage 1, ``method=vqkd``) maps each crop to a grid of code ids the size
    of the ViT patch grid. About 40% of the patches are masked block-wise (masks come from the loader)
    and two losses predict the ids at the masked positions with one shared linear classifier (``head``):

    * ``L_MIM``: the classifier on the final patch tokens (BEiT's loss);
    * ``L_MIM_C`` (CLS-token pretraining): the final CLS token concatenated with the patch tokens of
      block ``cls_pretrain_layer`` (1-based: 9 of 12 for ViT-B, 21 of 24 for ViT-L) runs through a
      2-block :class:`~sslvit.heads.CLSPretrainHead`, whose patch outputs go through the same classifier.

    ``L = L_MIM + L_MIM_C``. The CLS head lives in ``student["cls_head"]``, outside
    ``student["backbone"]``, so evaluation, export and checkpoint import read the backbone alone.

    The tokenizer is a frozen building block under ``tokenizer`` (no gradient, always in eval mode);
    schedules, parameter groups and clipping are the base's. Backbone options as in BEiT (LayerScale 0.1,
    shared relative position bias, which the CLS head's blocks use too).

    Args:
        backbone: the ViT (a ``MaskedViT``; ViT-B/16 in the paper).
        optim: optimiser and schedules (paper: AdamW (0.9, 0.999), lr 1.5e-3 at batch 2048, wd 0.05).
        tokenizer: a :class:`~sslvit.tokenizers.base.VisualTokenizer` (frozen here).
        cls_pretrain_layer: block whose output patch tokens the CLS head reads, 1-based; None = depth - 3.
        cls_head_depth: blocks of the CLS head (2).
        cls_head_layerscale_init: LayerScale of the CLS head's blocks (the backbone's, 0.1; None = off).
        cls_head_drop_path_rate: stochastic depth in the CLS head's blocks.
        eval_features: ``mean_patch`` or ``cls`` (BEiT v2's linear probe reads the CLS token, which the
            CLS pretraining trains).
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        tokenizer: nn.Module,
        cls_pretrain_layer: int | None = None,
        cls_head_depth: int = 2,
        cls_head_layerscale_init: float | None = None,
        cls_head_drop_path_rate: float = 0.0,
        eval_features: str = "cls",
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim", "tokenizer"])
        visual_tokenizer = check_tokenizer(tokenizer)
        self.eval_features = check_eval_features(eval_features)
        vit: Any = backbone
        depth = len(vit.blocks)
        layer = max(1, depth - 3) if cls_pretrain_layer is None else int(cls_pretrain_layer)
        if not 1 <= layer <= depth:
            raise ValueError(
                f"cls_pretrain_layer must be in 1..{depth} (blocks of the backbone), got {layer}"
            )
        self.cls_pretrain_layer = layer
        self.vocab_size = int(visual_tokenizer.vocab_size)
        first: Any = vit.blocks[0]
        self.student["head"] = mim_classifier(self.embed_dim, self.vocab_size)  # shared by both losses
        self.student["cls_head"] = CLSPretrainHead(
            self.embed_dim,
            first.attn.num_heads,
            depth=cls_head_depth,
            mlp_ratio=first.mlp.fc1.out_features / self.embed_dim,
            qkv_bias=first.attn.qkv.bias is not None,
            layerscale_init=cls_head_layerscale_init,
            drop_path_rate=cls_head_drop_path_rate,
        )
        self.tokenizer = self.keep_frozen(tokenizer)
        self.mim_loss = MIMCrossEntropy()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) normalised images -> (B,D) evaluation features of the backbone (no CLS head)."""
        return eval_features(self.student["backbone"], images, self.eval_features)

    def backbone_with_layer(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """The backbone's ``forward_features`` and the ``(B, N, D)`` patch tokens of block ``l``.

        One pass: a forward hook on block ``l`` keeps its output, so the backbone's own forward
        (fused attention, relative position bias) is used unchanged.
        """
        backbone: Any = self.student["backbone"]
        kept: list[torch.Tensor] = []
        block: nn.Module = backbone.blocks[self.cls_pretrain_layer - 1]
        handle = block.register_forward_hook(lambda _module, _inputs, output: kept.append(output))
        try:
            out = backbone.forward_features(images, masks=masks)
        finally:
            handle.remove()
        if len(kept) != 1:
            raise RuntimeError(
                f"the forward hook on block {self.cls_pretrain_layer} fired {len(kept)} times instead of "
                "once: run method=beitv2 with backbone.compile_blocks=false"
            )
        layer = kept[0]
        if torch.is_grad_enabled() and self.training and not layer.requires_grad:
            # re-entrant checkpointing runs the blocks without autograd: L_MIM_C would not reach them
            raise RuntimeError("the layer-l tokens carry no gradient: turn off gradient checkpointing")
        return out, layer[:, backbone.num_prefix_tokens :]

    def head_bias(self, height: int, width: int) -> torch.Tensor | None:
        """The backbone's relative position bias restricted to the CLS head's ``[CLS, patches]`` tokens."""
        backbone: Any = self.student["backbone"]
        bias = backbone.attention_bias(height, width)  # (1, heads, T, T), T = 1 + R + N
        if bias is None or backbone.num_prefix_tokens == 1:
            return bias
        start, tokens = backbone.num_prefix_tokens, bias.shape[-1]
        keep = torch.arange(start - 1, tokens, device=bias.device)  # made on the device: no host copy
        keep[0] = 0
        return bias[:, :, keep][:, :, :, keep]  # (1, heads, 1 + N, 1 + N): registers dropped

    def mim_losses(
        self,
        patch_tokens: torch.Tensor,
        cls_head_tokens: torch.Tensor,
        targets: torch.Tensor,
        mask_indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(L_MIM, L_MIM_C, masked logits of L_MIM)``; only the masked positions are read.

        Args:
            patch_tokens: ``(B, N, D)`` final normalised patch tokens of the backbone.
            cls_head_tokens: ``(B, N, D)`` CLS head outputs at the patch positions.
            targets: ``(B, N)`` tokenizer ids.
            mask_indices: ``(M,)`` positions of the masked tokens in the flattened ``(B * N)`` grid
                (``MaskedImageBatch.mask_indices``; gathering by index needs no host sync).
        """
        classifier = self.student["head"]
        masked_targets = gather_masked(targets, mask_indices)  # (M,)
        # The classifier runs on masked tokens only, with the same weights for both losses.
        logits = classifier(gather_masked(patch_tokens, mask_indices))  # (M, K)
        cls_logits = classifier(gather_masked(cls_head_tokens, mask_indices))  # (M, K)
        return self.mim_loss(logits, masked_targets), self.mim_loss(cls_logits, masked_targets), logits

    def training_step(self, batch: MaskedImageBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        if batch.masks is None or batch.tokenizer_images is None:
            raise ValueError(
                "BEiT v2 needs masks and a tokenizer view in each batch: use data/transform=beit with a "
                "masking config (method=beitv2 selects both)"
            )
        self.log_skipped(batch.num_skipped)
        backbone: Any = self.student["backbone"]
        height, width = batch.images.shape[-2:]
        targets = tokenizer_target_ids(
            self.tokenizer, batch.tokenizer_images, backbone.grid_size(height, width)
        )

        out, layer_tokens = self.backbone_with_layer(batch.images, batch.masks)
        cls_head_tokens = self.student["cls_head"](
            out["x_norm_clstoken"], layer_tokens, self.head_bias(height, width)
        )
        indices = batch.mask_indices
        assert indices is not None  # derived from masks by MaskedImageBatch
        mim, mim_cls, logits = self.mim_losses(out["x_norm_patchtokens"], cls_head_tokens, targets, indices)
        loss = mim + mim_cls

        accuracy = self.mim_loss.accuracy(logits, gather_masked(targets, indices))
        self.log_losses(loss, {"mim": mim, "mim_cls": mim_cls}, batch.batch_size, {"train/mim_acc": accuracy})
        # Collapse check on the targets themselves.
        distinct = global_distinct_codes(targets, logits.shape[-1])
        self.log("health/target_codes", distinct, on_step=True, on_epoch=False)
        return {"loss": loss}
