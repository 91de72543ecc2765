"""Codebook usage of a tokenizer on the evaluation images (VQ-KD's "codebook usage" figure)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from sslvit.callbacks.features import eval_mode
from sslvit.callbacks.periodic import PeriodicEvalCallback, datamodule_of
from sslvit.tokenizers.norm_ema_quantizer import usage_stats
from sslvit.utils.distributed import all_reduce_sum
from sslvit.utils.id_counts import id_counts


class CodebookUsageCallback(PeriodicEvalCallback):
    """Tokenizes the validation split and reports how much of the codebook it uses.

    BEiT v2 (Peng et al., 2022, arXiv:2208.06366, table 5) reports the share of the 8192 codes that the
    ImageNet validation images use; this is that figure for our evaluation subset. Logs, after every
    ``every_n_epochs``-th epoch and at the end of fit:

    * ``val/codebook_usage``: percentage of codebook entries that occur at least once;
    * ``val/codebook_perplexity``: ``exp`` of the entropy of the token frequencies (effective entries);
    * ``val/rec_loss``: mean ``1 - cos`` between the decoder output and the teacher's patch features.

    The module must offer ``evaluation_stats(images) -> (ids (B,h,w), rec_loss (B,))`` and a
    ``tokenizer`` with ``vocab_size`` (``sslvit.methods.VQKDTraining``). Labels are not needed. Under
    DDP the counts are summed over ranks (the sampler's few padding repeats are counted too).

    Args:
        every_n_epochs: evaluation period in epochs (0: only at the end of fit).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not callable(getattr(pl_module, "evaluation_stats", None)):
            raise TypeError(f"CodebookUsageCallback needs a tokenizer method, got {type(pl_module).__name__}")
        datamodule = datamodule_of(trainer)
        self._enabled = datamodule is not None and callable(getattr(datamodule, "eval_dataloader", None))

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        device = pl_module.device
        module: Any = pl_module  # VQKDTraining: tokenizer, evaluation_stats
        vocab_size = int(module.tokenizer.vocab_size)
        counts = torch.zeros(vocab_size, device=device, dtype=torch.float64)
        totals = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, image count
        with eval_mode(pl_module):
            for batch in datamodule_of(trainer).eval_dataloader("val"):
                images = batch[0].to(device)
                ids, rec_loss = module.evaluation_stats(images)
                counts += id_counts(ids, vocab_size).to(counts.dtype)
                totals += torch.stack([rec_loss.double().sum(), totals.new_tensor(rec_loss.numel())])
        all_reduce_sum(counts)
        all_reduce_sum(totals)
        usage, perplexity = usage_stats(counts)
        return {
            "val/codebook_usage": 100.0 * usage,
            "val/codebook_perplexity": perplexity,
            "val/rec_loss": float(totals[0] / totals[1].clamp(min=1)),
        }
