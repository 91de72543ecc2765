"""BEiT (stage 2) as a LightningModule: masked image modelling against a frozen visual tokenizer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sslvit.data.batch import MaskedImageBatch
from sslvit.heads import mim_classifier
from sslvit.losses import MIMCrossEntropy
from sslvit.methods.eval_features import check_eval_features, eval_features
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.vit_pretraining import ViTPretrainingModule
from sslvit.tokenizers.targets import check_tokenizer, global_distinct_codes, tokenizer_target_ids
from sslvit.utils.masked_tokens import gather_masked


class BEiT(ViTPretrainingModule):
    """BERT pre-training of image transformers (Bao et al., 2022, arXiv:2106.08254).

    A frozen tokenizer (a discrete VAE trained in stage 1, or DALL-E's) turns its view of each crop into
    a grid of visual tokens the size of the ViT patch grid. About 40% of the patches are masked
    block-wise (masks come from the loader), their embeddings replaced by the learned ``[MASK]`` token,
    and a linear softmax classifier on the final hidden states predicts the token id at every masked
    position: ``L = CE(classifier(h_i), z_i)`` averaged over masked patches only.

    The tokenizer is a frozen building block under ``tokenizer`` (no gradient, always in eval mode); the
    student holds the backbone and the classifier (``head``); lr / wd schedules, parameter groups
    (rel-pos table and tokens without weight decay) and clipping are the base's. BEiT's backbone options
    (LayerScale 0.1, shared relative position bias, drop path 0.1) are backbone settings.

    Args:
        backbone: the ViT (a ``MaskedViT``; ViT-B/16 in the paper).
        optim: optimiser and schedules (paper: AdamW (0.9, 0.999), lr 1.5e-3 at batch 2000, wd 0.05).
        tokenizer: a :class:`~sslvit.tokenizers.base.VisualTokenizer` (frozen here).
        eval_features: what ``forward`` returns for evaluation: ``mean_patch`` (average of the final
            patch tokens, BEiT's linear-probe pooling; the MIM loss never trains the CLS token) or
            ``cls``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        tokenizer: nn.Module,
        eval_features: str = "mean_patch",
    ) -> None:
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim", "tokenizer"])
        self.vocab_size = int(check_tokenizer(tokenizer).vocab_size)
        self.eval_features = check_eval_features(eval_features)
        self.student["head"] = mim_classifier(self.embed_dim, self.vocab_size)
        self.tokenizer = self.keep_frozen(tokenizer)
        self.mim_loss = MIMCrossEntropy()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) normalised images -> (B,D) evaluation features of the (only) backbone."""
        return eval_features(self.student["backbone"], images, self.eval_features)

    def target_ids(self, tokenizer_images: torch.Tensor, patch_grid: tuple[int, int]) -> torch.Tensor:
        """``(B, N)`` tokenizer ids of the tokenizer view, checked against the ViT patch grid."""
        return tokenizer_target_ids(self.tokenizer, tokenizer_images, patch_grid)

    def training_step(self, batch: MaskedImageBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        if batch.masks is None or batch.tokenizer_images is None:
            raise ValueError(
                "BEiT needs masks and a tokenizer view in each batch: use data/transform=beit with a "
                "masking config (method=beit selects both)"
            )
        self.log_skipped(batch.num_skipped)
        backbone: Any = self.student["backbone"]
        targets = self.target_ids(batch.tokenizer_images, backbone.grid_size(*batch.images.shape[-2:]))

        out = backbone.forward_features(batch.images, masks=batch.masks)
        # The classifier runs on the masked tokens only: the loss reads nothing else. Gathered by the
        # loader's indices: boolean indexing would sync the host with the device.
        indices = batch.mask_indices
        assert indices is not None  # derived from masks by MaskedImageBatch
        masked_logits = self.student["head"](gather_masked(out["x_norm_patchtokens"], indices))  # (M, K)
        masked_targets = gather_masked(targets, indices)  # (M,)
        # The mean over this process's masked tokens (as the official code): the global batch's mean when
        # every process masks as many tokens, as BEiT's fixed-count block masking nearly does.
        loss = self.mim_loss(masked_logits, masked_targets)

        accuracy = self.mim_loss.accuracy(masked_logits, masked_targets)
        self.log_losses(loss, {"mim": loss}, batch.batch_size, {"train/mim_acc": accuracy})
        # Collapse check on the targets themselves.
        distinct = global_distinct_codes(targets, masked_logits.shape[-1])
        self.log("health/target_codes", distinct, on_step=True, on_epoch=False)
        return {"loss": loss}
