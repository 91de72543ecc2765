"""Training BEiT's discrete VAE tokenizer (stage 1) as a LightningModule."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.data.batch import MaskedImageBatch
from sslvit.methods.base import PretrainingModule
from sslvit.methods.optim_config import OptimConfig
from sslvit.tokenizers.dvae import DVAE, kl_to_uniform
from sslvit.tokenizers.io import TOKENIZER_KEY, save_tokenizer, tokenizer_record
from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.utils.distributed import all_reduce_sum
from sslvit.utils.id_counts import id_counts
from sslvit.utils.schedules import cosine_ramp

TOKENIZER_FILE = "tokenizer.pt"


def gumbel_temperature(step: int, anneal_steps: int, start: float, end: float) -> float:
    """Gumbel-softmax temperature: half cosine from ``start`` to ``end`` over ``anneal_steps``, then ``end``.

    DALL-E (Ramesh et al., 2021) anneals tau from 1 to 1/16 with a cosine schedule.
    """
    return cosine_ramp(step, anneal_steps, start, end)


def kl_weight_at(step: int, warmup_steps: int, end: float) -> float:
    """KL weight: a half cosine from 0 to ``end`` over ``warmup_steps``, then ``end`` (DALL-E's warm-up)."""
    return cosine_ramp(step, warmup_steps, 0.0, end)


class DVAETraining(PretrainingModule):
    """Trains a :class:`~sslvit.tokenizers.dvae.DVAE` (the tokenizer of BEiT, Bao et al., 2022).

    As in DALL-E (Ramesh et al., 2021, arXiv:2102.12092): the decoder reconstructs the image from a
    Gumbel-softmax relaxation of the encoder's token distribution, whose temperature is annealed from
    ``temperature_start`` towards ``temperature_end`` (1/16); a KL term to the uniform prior is weighted
    by ``kl_weight`` after a warm-up from 0. ``L = MSE(reconstruction, x) + beta * KL(q || U)`` on pixels in
    [0, 1], the KL averaged per token (so ``kl_weight`` is not DALL-E's per-image beta = 6.6).

    Logs ``train/loss``, ``train/recon_loss``, ``train/kl_loss``, ``sched/{lr,wd,temperature,kl_weight}``
    and the batch's argmax-code ``health/codebook_usage`` (percent of the vocabulary) and
    ``health/perplexity``. The reconstruction error on held-out images and image grids come from
    :class:`~sslvit.callbacks.TokenizerMonitor`. At the end of fit the tokenizer is written to
    ``<run folder>/tokenizer.pt``; checkpoints carry the tokenizer's class and arguments as well, so
    either file serves as ``tokenizer.path`` of stage 2. ``forward(images)`` returns the mean code
    distribution ``(B, vocab_size)`` (a bag of visual words), enough for a k-NN / probe check.

    Args:
        tokenizer: the DVAE to train.
        optim: AdamW and its schedules (lr warm-up + cosine, cosine weight decay, clipping).
        temperature_start / temperature_end: Gumbel-softmax temperature range (1 -> 1/16).
        temperature_anneal_epochs: length of the temperature cosine.
        kl_weight: KL weight after warm-up.
        kl_warmup_epochs: length of the KL-weight warm-up from 0.
        straight_through: hard one-hot codes in the forward pass, soft gradients (off in DALL-E).
    """

    def __init__(
        self,
        tokenizer: DVAE,
        optim: OptimConfig,
        temperature_start: float = 1.0,
        temperature_end: float = 1.0 / 16,
        temperature_anneal_epochs: float = 10.0,
        kl_weight: float = 1e-3,
        kl_warmup_epochs: float = 1.0,
        straight_through: bool = False,
    ) -> None:
        super().__init__(optim)
        if not 0 < temperature_end <= temperature_start:
            raise ValueError(
                f"need 0 < temperature_end <= temperature_start, got {temperature_end}, {temperature_start}"
            )
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.save_hyperparameters(ignore=["tokenizer", "optim"])
        self.tokenizer = tokenizer
        self.temperatures = (float(temperature_start), float(temperature_end))
        self.temperature_anneal_epochs = float(temperature_anneal_epochs)
        self.kl_weight = float(kl_weight)
        self.kl_warmup_epochs = float(kl_warmup_epochs)
        self.straight_through = straight_through
        self.embed_dim = int(tokenizer.vocab_size)  # feature size of forward(), read by the linear probe

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B,C,H,W) pixels in [0, 1] -> (B, vocab_size) code distribution averaged over positions."""
        return self.tokenizer.logits(images).float().softmax(dim=1).mean(dim=(2, 3))

    # ------------------------------------------------------------------------ networks, schedules
    def trained_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        return self.tokenizer.named_parameters()

    def clipping_networks(self) -> dict[str, nn.Module]:
        return {"tokenizer": self.tokenizer}

    def method_schedules(self, step: int) -> dict[str, float]:
        """Gumbel temperature and KL weight at optimizer step ``step`` (0-based)."""
        return {
            "temperature": gumbel_temperature(
                step, self.epochs_to_steps(self.temperature_anneal_epochs), *self.temperatures
            ),
            "kl_weight": kl_weight_at(step, self.epochs_to_steps(self.kl_warmup_epochs), self.kl_weight),
        }

    # ---------------------------------------------------------------------------------- training
    def training_step(self, batch: MaskedImageBatch, batch_idx: int) -> dict[str, torch.Tensor]:
        values = self.method_schedules(self.trainer.global_step)
        images = batch.images
        out = self.tokenizer(images, temperature=values["temperature"], hard=self.straight_through)
        recon_loss = F.mse_loss(out.reconstruction.float(), images.float())
        kl_loss = kl_to_uniform(out.logits)
        loss = recon_loss + values["kl_weight"] * kl_loss

        self.log_losses(loss, {"recon": recon_loss, "kl": kl_loss}, batch.batch_size)
        with torch.no_grad():
            counts = id_counts(out.logits.argmax(dim=1), self.tokenizer.vocab_size)
            usage, perplexity = usage_and_perplexity(all_reduce_sum(counts.float()))
        self.log_dict({"health/codebook_usage": 100.0 * usage, "health/perplexity": perplexity}, on_step=True)
        self.log_skipped(batch.num_skipped)
        return {"loss": loss}

    # ------------------------------------------------------------------------------ tokenizer file
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # With the class and its arguments next to the weights, the checkpoint itself is a tokenizer file.
        checkpoint[TOKENIZER_KEY] = tokenizer_record(self.tokenizer)

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            path = save_tokenizer(self.tokenizer, Path(self.trainer.default_root_dir) / TOKENIZER_FILE)
            print(f"tokenizer: {path}")
