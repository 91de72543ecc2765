"""Training the VQ-KD tokenizer (BEiT v2, stage 1) as a LightningModule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.backbones.feature_teacher import FeatureTeacher
from sslvit.backbones.masked_vit import MaskedViT
from sslvit.data.batch import MultiCropBatch
from sslvit.methods.optim_config import OptimConfig
from sslvit.methods.vit_pretraining import ViTPretrainingModule
from sslvit.tokenizers.io import TOKENIZER_KEY, save_tokenizer, tokenizer_record
from sslvit.tokenizers.vqkd import VQKD, cosine_reconstruction_loss
from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.utils.fsdp import unwrapped_name


class VQKDTraining(ViTPretrainingModule):
    """Vector-quantised knowledge distillation (Peng et al., 2022, "BEiT v2", arXiv:2208.06366, §2.2).

    The tokenizer (:class:`~sslvit.tokenizers.vqkd.VQKD`: encoder, code projection, EMA codebook,
    decoder) learns to reconstruct a frozen teacher's final patch features from the quantised codes:
    ``L = mean(1 - cos(decoder output, teacher patch feature)) + commitment_weight * commitment``. The
    codebook itself is updated by EMA inside the quantiser, not by the optimiser.

    On the base: ``self.student`` holds the tokenizer's parts (``backbone`` = encoder, ``encode_proj``,
    ``quantizer``, ``decoder``, ``decode_proj``; the same module objects as :attr:`tokenizer`, so the
    checkpoint's ``student.*`` keys are the tokenizer's state dict); :attr:`feature_teacher` is the
    frozen feature teacher, a building block (no gradient, always in eval mode). Parameter groups, lr /
    wd schedules and clipping are the base's. ``forward(images)`` gives the encoder's
    mean-pooled patch features (for evaluation callbacks; the teacher's would not change in training).

    Stage 2 reads the tokenizer from ``<run dir>/tokenizer.pt``, written at the end of fit in the format
    of :mod:`sslvit.tokenizers.io` (``load_tokenizer``); checkpoints also carry its ``sslvit_tokenizer``
    record, the weights being the ``student.*`` entries.

    Logs ``train/loss``, ``train/rec_loss``, ``train/commit_loss`` and, over windows of ``usage_window``
    steps (global counts), ``health/codebook_usage`` (fraction of entries used) and
    ``health/codebook_perplexity``; ``health/codebook_restarts`` counts dead-entry restarts.

    Args:
        backbone: the tokenizer encoder (a ``MaskedViT``; ViT-B/16 in the paper).
        optim: optimiser and schedules (paper: AdamW (0.9, 0.99), lr 5e-5 per 128 images, wd 1e-4).
        teacher: the frozen :class:`~sslvit.backbones.feature_teacher.FeatureTeacher`.
        num_codes / code_dim: codebook size and entry dimension (8192 x 32).
        decay: codebook EMA decay (0.99).
        kmeans_init / kmeans_iters: k-means initialisation on the first batch (on, 10 iterations).
        dead_code_steps: re-seed entries unused for this many steps (0 = off, as in the paper).
        codebook_update: ``"batch_mean"`` (BEiT v2's official rule: entries move towards the direction
            of their batch mean) or ``"running_mean"`` (count-weighted running averages).
        decoder_depth / decoder_dim / decoder_heads: decoder shape (3 blocks at the encoder's width).
        commitment_weight: weight of the commitment loss (1.0).
        usage_window: steps per codebook-usage window.
        pixel_mean / pixel_std: the data normalisation (stored in the tokenizer for ``encode``).
    """

    # The encoder reads whole images: its mask token (part of the tokenizer file) gets no gradient.
    unused_parameters = ("student.backbone.mask_token",)

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig,
        teacher: FeatureTeacher,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
        codebook_update: str = "batch_mean",
        decoder_depth: int = 3,
        decoder_dim: int | None = None,
        decoder_heads: int | None = None,
        commitment_weight: float = 1.0,
        usage_window: int = 100,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        if not isinstance(backbone, MaskedViT):
            raise TypeError(f"the VQ-KD encoder must be a MaskedViT, got {type(backbone).__name__}")
        super().__init__(backbone, optim)
        self.save_hyperparameters(ignore=["backbone", "optim", "teacher"])
        tokenizer = VQKD(
            backbone,
            teacher.embed_dim,
            num_codes=num_codes,
            code_dim=code_dim,
            decay=decay,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            dead_code_steps=dead_code_steps,
            codebook_update=codebook_update,
            decoder_depth=decoder_depth,
            decoder_dim=decoder_dim,
            decoder_heads=decoder_heads,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
        )
        for name, child in tokenizer.named_children():
            if name != "backbone":
                self.student[name] = child
        self._tokenizer = (tokenizer,)  # a tuple: not registered twice, shares every child with student
        self.feature_teacher = self.keep_frozen(teacher)
        self.commitment_weight = float(commitment_weight)
        if usage_window < 1:
            raise ValueError(f"usage_window must be >= 1, got {usage_window}")
        self.usage_window = int(usage_window)
        self._window_usage: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def tokenizer(self) -> VQKD:
        return self._tokenizer[0]

    # ------------------------------------------------------------------------------- optimiser
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        return super().no_weight_decay(name, param) or unwrapped_name(name) == "decoder.pos_embed"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) normalised images -> (B,D) mean-pooled encoder patch features."""
        tokens = self.tokenizer.backbone.forward_features(images)["x_norm_patchtokens"]
        assert tokens is not None
        return tokens.mean(dim=1)

    # ----------------------------------------------------------------------------------- training
    def training_step(self, batch: MultiCropBatch, batch_idx: int) -> dict[str, Any]:
        self.log_skipped(batch.num_skipped)
        images = torch.cat(batch.global_crops)  # one view per image in the VQ-KD recipes
        grid = self.tokenizer.grid_size(images.shape[-2], images.shape[-1])
        with torch.no_grad():
            target = self.feature_teacher.patch_features(images, grid)  # (B, N, D_teacher)

        out = self.tokenizer(images)
        rec_loss = cosine_reconstruction_loss(out.reconstruction, target)
        loss = rec_loss + self.commitment_weight * out.commit_loss

        self.log_losses(loss, {"rec": rec_loss, "commit": out.commit_loss}, images.shape[0])
        self.log_codebook_usage()
        return {"loss": loss}

    def log_codebook_usage(self) -> None:
        """Usage and perplexity of the last complete window (the running one before the first ends)."""
        quantizer = self.tokenizer.quantizer
        # Tensors throughout: reading the statistics as floats every step would make a GPU host wait.
        if (self.trainer.global_step + 1) % self.usage_window == 0:
            self._window_usage = usage_and_perplexity(quantizer.usage_counts.clone())
            quantizer.reset_usage()
        window = self._window_usage
        usage, perplexity = window if window is not None else usage_and_perplexity(quantizer.usage_counts)
        self.log("health/codebook_usage", usage, on_step=True, on_epoch=False)
        self.log("health/codebook_perplexity", perplexity, on_step=True, on_epoch=False)
        self.log("health/codebook_restarts", float(quantizer.num_restarted), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------------------------ outputs
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[TOKENIZER_KEY] = tokenizer_record(self.tokenizer)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            save_tokenizer(self.tokenizer, Path(self.trainer.default_root_dir) / "tokenizer.pt")

    # --------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluation_stats(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, h, w)`` and per-image reconstruction loss ``(B,)``; no codebook update."""
        tokenizer = self.tokenizer
        grid = tokenizer.grid_size(images.shape[-2], images.shape[-1])
        ids = tokenizer.encode_normalized(images)
        codes = tokenizer.quantizer.codebook[ids.flatten(1)]  # (B, N, d)
        reconstruction = tokenizer.decode(codes, grid)
        target = self.feature_teacher.patch_features(images, grid)
        cos = torch.nn.functional.cosine_similarity(reconstruction.float(), target.float(), dim=-1)
        return ids, (1.0 - cos).mean(dim=1)
