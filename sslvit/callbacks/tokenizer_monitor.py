"""Held-out quality of a visual tokenizer during its training: codebook use, reconstruction, images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import make_grid, save_image

from sslvit.callbacks.features import eval_mode
from sslvit.callbacks.periodic import PeriodicEvaluation, datamodule_of
from sslvit.utils.atomic_write import atomic_write
from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.utils.distributed import all_reduce_sum
from sslvit.utils.id_counts import id_counts


class TokenizerMonitor(PeriodicEvaluation):
    """Codebook usage, perplexity and reconstruction error of a tokenizer on the val split.

    A discrete tokenizer is only useful as a MIM target if it uses many of its codes and keeps enough of
    the image to reconstruct it (BEiT, Bao et al., 2022; DALL-E, Ramesh et al., 2021); BEiT v2 (Peng et
    al., 2022, arXiv:2208.06366, table 5) reports the share of the codes the validation images use. Over
    the datamodule's val evaluation subset (labels are not needed) this logs, at the same points as the
    k-NN monitor:

    * ``val/codebook_usage``: percent of the vocabulary that is the token of some patch;
    * ``val/codebook_perplexity``: exp(entropy) of the code histogram (vocab size = uniform use,
      1 = collapse);
    * for a tokenizer trained to reconstruct features (VQ-KD: the module offers
      ``evaluation_stats(images) -> (ids (B,h,w), rec_loss (B,))``), ``val/rec_loss``: mean ``1 - cos``
      between the decoder output and the teacher's patch features;
    * for a pixel tokenizer (dVAE: ``pl_module.tokenizer.reconstruct``), ``val/recon_mse``: mean squared
      error of the images decoded from the hard tokens, on pixels in [0, 1] as the dVAE configs load
      them. The first ``num_images`` val images and their reconstructions are written as a two-row PNG
      grid to ``<run folder>/reconstructions/step<step>.png`` and sent to loggers that take images
      (TensorBoard, Weights & Biases).

    The module exposes the tokenizer (with ``vocab_size`` and ``encode``) as ``pl_module.tokenizer``.
    Under DDP the sums are taken over ranks (the sampler's few padding repeats are counted too).

    Args:
        every_n_epochs: evaluation period in epochs (0: only at the end of fit).
        num_images: images in the reconstruction grid of a pixel tokenizer (0: no grid).
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16) -> None:
        super().__init__(every_n_epochs)
        self.num_images = int(num_images)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if getattr(pl_module, "tokenizer", None) is None:
            raise TypeError(f"TokenizerMonitor needs a tokenizer method, got {type(pl_module).__name__}")
        eval_sets = getattr(datamodule_of(trainer), "eval_sets", {}) or {}
        self._enabled = eval_sets.get("val") is not None
        if not self._enabled:
            rank_zero_warn("TokenizerMonitor: the datamodule has no val evaluation set; it is skipped.")

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        module: Any = pl_module  # DVAETraining / VQKDTraining
        tokenizer = module.tokenizer
        feature_stats = getattr(module, "evaluation_stats", None)
        reconstruct = None if callable(feature_stats) else getattr(tokenizer, "reconstruct", None)
        device = pl_module.device
        counts = torch.zeros(int(tokenizer.vocab_size), dtype=torch.float64, device=device)
        errors = torch.zeros(2, dtype=torch.float64, device=device)  # [error sum, number of terms]
        shown: list[torch.Tensor] = []
        with eval_mode(pl_module):
            for batch in datamodule_of(trainer).eval_dataloader("val"):
                images = batch[0].to(device, non_blocking=True)
                if callable(feature_stats):
                    ids, rec_loss = feature_stats(images)
                    errors += torch.stack([rec_loss.double().sum(), errors.new_tensor(rec_loss.numel())])
                else:
                    ids = tokenizer.encode(images)
                counts += id_counts(ids, counts.numel())
                if reconstruct is None:
                    continue
                recon = reconstruct(images).float()
                errors[0] += (recon - images.float()).pow(2).sum().double()
                errors[1] += recon.numel()
                if sum(x.shape[0] for x in shown) < self.num_images:
                    shown.append(torch.stack([images.float(), recon], dim=1).cpu())  # (B, 2, C, H, W)
        used_fraction, perplexity = usage_and_perplexity(all_reduce_sum(counts))
        errors = all_reduce_sum(errors)
        metrics = {
            "val/codebook_usage": 100.0 * float(used_fraction),
            "val/codebook_perplexity": float(perplexity),
        }
        if callable(feature_stats):
            metrics["val/rec_loss"] = float(errors[0] / errors[1].clamp_min(1))
        elif reconstruct is not None:
            metrics["val/recon_mse"] = float(errors[0] / errors[1].clamp_min(1))
            if shown and trainer.is_global_zero:
                self._write_grid(trainer, torch.cat(shown)[: self.num_images])
        return metrics

    def _write_grid(self, trainer: pl.Trainer, pairs: torch.Tensor) -> None:
        """``pairs (n, 2, C, H, W)`` -> originals on the top row, reconstructions below."""
        grid = make_grid(pairs.transpose(0, 1).flatten(0, 1), nrow=pairs.shape[0], padding=1).clamp(0, 1)
        path = Path(trainer.default_root_dir) / "reconstructions" / f"step{trainer.global_step:07d}.png"
        atomic_write(path, lambda f: save_image(grid, f, format="png"), what="image")
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)  # Weights & Biases
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)  # TensorBoard
            if callable(log_image):
                log_image(key="val/reconstructions", images=[grid], step=trainer.global_step)
            elif callable(add_image):
                add_image("val/reconstructions", grid, trainer.global_step)
