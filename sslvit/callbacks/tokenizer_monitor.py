"""Held-out quality of a visual tokenizer during its training: reconstruction, codebook usage, images."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import make_grid, save_image

from sslvit.callbacks.features import eval_mode
from sslvit.callbacks.periodic import PeriodicEvalCallback, datamodule_of
from sslvit.tokenizers.dvae import usage_and_perplexity
from sslvit.utils.distributed import all_reduce_sum
from sslvit.utils.id_counts import id_counts


class TokenizerMonitor(PeriodicEvalCallback):
    """Codebook usage, perplexity and (pixel tokenizers) reconstruction error on the val split.

    A discrete tokenizer is only useful as a MIM target if it uses many of its codes and keeps enough
    of the image to reconstruct it (BEiT, Bao et al., 2022; DALL-E, Ramesh et al., 2021). Over the
    datamodule's val evaluation subset this logs, at the same points as the k-NN monitor:

    * ``val/codebook_usage``: percent of the vocabulary that is the argmax token somewhere;
    * ``val/perplexity``: exp(entropy) of the code histogram (vocab size = uniform use, 1 = collapse);
    * ``val/recon_mse``: mean squared error of ``tokenizer.reconstruct(images)`` (decoded from the hard
      tokens), when the tokenizer has ``reconstruct`` — on pixels in [0, 1] as the dVAE configs load them.

    The first ``num_images`` val images and their reconstructions are written as a two-row PNG grid to
    ``<run folder>/reconstructions/step<step>.png`` and also sent to loggers that take images
    (TensorBoard, Weights & Biases). The module must expose the tokenizer as ``pl_module.tokenizer``.

    Args:
        every_n_epochs: evaluation period in epochs (0: only at the end of fit).
        num_images: images in the reconstruction grid (0: no grid).
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16) -> None:
        super().__init__(every_n_epochs)
        self.num_images = int(num_images)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = datamodule_of(trainer)
        eval_sets = getattr(datamodule, "eval_sets", {}) or {}
        self._enabled = eval_sets.get("val") is not None  # labels are not needed here
        if not self._enabled:
            rank_zero_warn("TokenizerMonitor: the datamodule has no val evaluation set; it is skipped.")

    @torch.no_grad()
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is None:
            raise AttributeError(f"TokenizerMonitor needs {type(pl_module).__name__}.tokenizer")
        reconstruct = getattr(tokenizer, "reconstruct", None)
        device = pl_module.device
        counts = torch.zeros(int(tokenizer.vocab_size), device=device)
        # [sum of squared errors, number of pixel values]
        errors = torch.zeros(2, dtype=torch.float64, device=device)
        shown: list[torch.Tensor] = []
        with eval_mode(pl_module):
            for images, _labels, _indices in datamodule_of(trainer).eval_dataloader("val"):
                images = images.to(device, non_blocking=True)
                counts += id_counts(tokenizer.encode(images), counts.numel())
                if reconstruct is None:
                    continue
                recon = reconstruct(images).float()
                errors[0] += (recon - images.float()).pow(2).sum().double()
                errors[1] += recon.numel()
                if sum(x.shape[0] for x in shown) < self.num_images:
                    shown.append(torch.stack([images.float(), recon], dim=1).cpu())  # (B, 2, C, H, W)
        # DistributedSampler pads the last shard with a few repeated images: negligible in these sums.
        usage, perplexity = usage_and_perplexity(all_reduce_sum(counts))
        metrics = {"val/codebook_usage": 100.0 * float(usage), "val/perplexity": float(perplexity)}
        if reconstruct is not None:
            errors = all_reduce_sum(errors)
            metrics["val/recon_mse"] = float(errors[0] / errors[1].clamp_min(1))
            if shown and trainer.is_global_zero:
                self._write_grid(trainer, torch.cat(shown)[: self.num_images])
        return metrics

    def _write_grid(self, trainer: pl.Trainer, pairs: torch.Tensor) -> None:
        """``pairs (n, 2, C, H, W)`` -> originals on the top row, reconstructions below."""
        grid = make_grid(pairs.transpose(0, 1).flatten(0, 1), nrow=pairs.shape[0], padding=1).clamp(0, 1)
        path = Path(trainer.default_root_dir) / "reconstructions" / f"step{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        for logger in trainer.loggers:
            log_image = getattr(logger, "log_image", None)  # Weights & Biases
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)  # TensorBoard
            if callable(log_image):
                log_image(key="val/reconstructions", images=[grid], step=trainer.global_step)
            elif callable(add_image):
                add_image("val/reconstructions", grid, trainer.global_step)
