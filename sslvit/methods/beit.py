"""BEiT (stage 2) as a LightningModule: masked image modelling against a frozen visual tokenizer."""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn

from sslvit.data.batch import MaskedImageBatch
from sslvit.losses import MIMCrossEntropy
from sslvit.methods.base import TeacherStudentModule
from sslvit.methods.optim_config import OptimConfig
from sslvit.tokenizers.base import VisualTokenizer
from sslvit.utils.distributed import all_reduce_sum
from sslvit.utils.masked_tokens import gather_masked

_EVAL_FEATURES = ("mean_patch", "cls")


def check_tokenizer(tokenizer: nn.Module) -> VisualTokenizer:
    """``tokenizer`` itself, or one clear error if it lacks the :class:`VisualTokenizer` interface."""
    if not isinstance(tokenizer, VisualTokenizer):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a visual tokenizer (needs vocab_size, downsample, "
            "grid_size and encode)"
        )
    return tokenizer


def mim_classifier(embed_dim: int, vocab_size: int) -> nn.Linear:
    """The linear softmax classifier over the tokenizer's vocabulary (truncated-normal 0.02, zero bias)."""
    head = nn.Linear(embed_dim, vocab_size)
    trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def eval_features(backbone: Any, images: torch.Tensor, kind: str) -> torch.Tensor:
    """(B,D) evaluation features: the final CLS token (``cls``) or the mean patch token (``mean_patch``)."""
    out = backbone.forward_features(images)
    if kind == "cls":
        return out["x_norm_clstoken"]
    return out["x_norm_patchtokens"].mean(dim=1)


@torch.no_grad()
def global_distinct_codes(ids: torch.Tensor, num_codes: int) -> torch.Tensor:
    """How many of ``num_codes`` ids occur in the ``ids`` of all processes (a float tensor, no host sync)."""
    seen = torch.zeros(num_codes, device=ids.device).scatter_(0, ids.flatten().long(), 1.0)
    return (all_reduce_sum(seen) > 0).sum().float()


@torch.no_grad()
def tokenizer_target_ids(
    tokenizer: Any, tokenizer_images: torch.Tensor, patch_grid: tuple[int, int]
) -> torch.Tensor:
    """``(B, N)`` tokenizer ids of the tokenizer view, checked against the ViT patch grid."""
    ids = tokenizer.encode(tokenizer_images)  # (B, h, w)
    if tuple(ids.shape[1:]) != tuple(patch_grid):
        size = tuple(tokenizer_images.shape[-2:])
        raise ValueError(
            f"the tokenizer turns its {size[0]}x{size[1]} view into a "
            f"{ids.shape[1]}x{ids.shape[2]} grid, but the ViT patch grid is "
            f"{patch_grid[0]}x{patch_grid[1]}: set "
            f"tokenizer.downsample={tokenizer.downsample} (the loader sizes the view from it)"
        )
    return ids.flatten(1)


class BEiT(TeacherStudentModule):
    """BERT pre-training of image transformers (Bao et al., 2022, arXiv:2106.08254).

    A frozen tokenizer (a discrete VAE trained in stage 1, or DALL-E's) turns its view of each crop into
    a grid of visual tokens the size of the ViT patch grid. About 40% of the patches are masked
    block-wise (masks come from the loader), their embeddings replaced by the learned ``[MASK]`` token,
    and a linear softmax classifier on the final hidden states predicts the token id at every masked
    position: ``L = CE(classifier(h_i), z_i)`` averaged over masked patches only.

    On the base: the tokenizer is a frozen teacher (:meth:`set_frozen_teacher`; no EMA, no momentum
    schedule) under ``teacher["tokenizer"]``; the student holds the backbone and the classifier
    (``head``); lr / wd schedules, parameter groups (rel-pos table and tokens without weight decay) and
    clipping are the base's. BEiT's backbone options (LayerScale 0.1, shared relative position bias,
    drop path 0.1) are backbone settings.

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
        visual_tokenizer = check_tokenizer(tokenizer)
        if eval_features not in _EVAL_FEATURES:
            raise ValueError(f"eval_features must be one of {_EVAL_FEATURES}, got {eval_features!r}")
        self.vocab_size = int(visual_tokenizer.vocab_size)
        self.student["head"] = mim_classifier(self.embed_dim, self.vocab_size)
        self.set_frozen_teacher(tokenizer=tokenizer)
        self.mim_loss = MIMCrossEntropy()
        self.eval_features = eval_features

    @property
    def tokenizer(self) -> Any:
        assert self.teacher is not None
        return self.teacher["tokenizer"]

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
