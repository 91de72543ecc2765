"""Log attention maps, PCA maps and the crops / masks of a training batch every n epochs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import nn

from sslvit.callbacks.features import eval_mode
from sslvit.callbacks.periodic import _is_last_epoch, datamodule_of
from sslvit.data.batch import MultiCropBatch
from sslvit.visualize.attention import attention_figure, attention_maps
from sslvit.visualize.crops import crops_and_masks_grid
from sslvit.visualize.pca import backbone_pca_maps, pca_figure
from sslvit.visualize.render import denormalize, save_png, upscale

log = logging.getLogger(__name__)


def evaluation_backbone(pl_module: nn.Module) -> Any:
    """The backbone that evaluation reads: the teacher's when there is one, else the student's."""
    for owner in ("teacher", "student"):
        networks = getattr(pl_module, owner, None)
        if isinstance(networks, nn.ModuleDict) and "backbone" in networks:
            return networks["backbone"]
    backbone = getattr(pl_module, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone
    raise TypeError(f"{type(pl_module).__name__} has no teacher / student / backbone to visualise")


def log_image(
    trainer: pl.Trainer, key: str, image: torch.Tensor, save_files: bool | None = None
) -> list[Path]:
    """Send a ``(3, H, W)`` image in [0, 1] to every logger that takes images, else write a PNG.

    TensorBoard gets ``add_image``, W&B gets ``log_image``; other loggers (CSV) or none mean a PNG
    under ``<run dir>/images/``, named after the key, epoch and step. ``save_files`` True writes the PNG
    in any case, False never.

    Returns:
        The PNG files written.
    """
    step = trainer.global_step
    taken = False
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)
            taken = True
        elif isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image.permute(1, 2, 0).numpy()], step=step)
            taken = True
    if save_files is False or (save_files is None and taken):
        return []
    name = f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}_step{step:07d}.png"
    return [save_png(image, Path(trainer.default_root_dir) / "images" / name)]


class Visualizer(pl.Callback):
    """Every ``every_n_epochs`` epochs (and at the end of fit), log pictures of what the model learns.

    * ``viz/attention``: last-block CLS attention of each head on fixed evaluation images
      (DINO, arXiv:2104.14294), register tokens excluded; thresholded to the top ``attention_mass`` of
      attention when that is set.
    * ``viz/pca``: first PCA component and foreground PCA colours of the patch features
      (DINOv2, arXiv:2304.07193).
    * ``viz/crops``: the first training batch of the epoch, global crops with masked patches shaded.

    Images come from the datamodule's ``eval_dataloader("val")`` (the first ``num_images``) when it has
    one, else from the global crops of the first training batch. Runs on rank 0 only (no collectives).

    Args:
        every_n_epochs: period in epochs; 0 = only at the end of fit.
        num_images: evaluation images per picture.
        attention / pca / crops: which pictures to log.
        attention_mass: None for raw weights, else keep the smallest set of patches holding this
            fraction of each head's attention (DINO's figures use 0.6).
        pca_threshold: foreground threshold of the scaled first PCA component.
        mean / std: normalisation of the data transform (None: min-max scale each image).
        min_side: nearest-neighbour enlarge each picture to at least this many pixels per side.
        save_files: see :func:`log_image` (None = PNGs only when no logger takes images).
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        num_images: int = 4,
        attention: bool = True,
        pca: bool = True,
        crops: bool = True,
        attention_mass: float | None = None,
        pca_threshold: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        min_side: int = 256,
        save_files: bool | None = None,
    ) -> None:
        if every_n_epochs < 0 or num_images < 1:
            raise ValueError(
                f"need every_n_epochs >= 0 and num_images >= 1, got {every_n_epochs}, {num_images}"
            )
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.show = {"attention": attention, "pca": pca, "crops": crops}
        self.attention_mass = attention_mass
        self.pca_threshold = pca_threshold
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self.min_side = min_side
        self.save_files = save_files
        self._first_batch: MultiCropBatch | None = None
        self.written: list[Path] = []

    def _due(self, trainer: pl.Trainer) -> bool:
        periodic = self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        return periodic or _is_last_epoch(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0 and isinstance(batch, MultiCropBatch) and trainer.is_global_zero:
            keep = slice(0, self.num_images)
            b = batch.batch_size
            masks = None
            if batch.masks is not None:  # keep the first images' rows of every global view
                masks = torch.cat(
                    [batch.masks[v * b : v * b + self.num_images] for v in range(len(batch.global_crops))]
                )
            self._first_batch = MultiCropBatch(
                global_crops=[x[keep].detach().cpu() for x in batch.global_crops],
                local_crops=[x[keep].detach().cpu() for x in batch.local_crops],
                labels=batch.labels[keep].cpu(),
                masks=None if masks is None else masks.cpu(),
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self._due(trainer):
            self.written += self.log_pictures(trainer, pl_module)
        self._first_batch = None

    def _images(self, trainer: pl.Trainer) -> torch.Tensor | None:
        datamodule = datamodule_of(trainer)
        if datamodule is not None and callable(getattr(datamodule, "eval_dataloader", None)):
            try:
                batch = next(iter(datamodule.eval_dataloader("val")))
                return batch[0][: self.num_images]
            except (ValueError, AssertionError) as err:  # no val set: fall back to the training crops
                log.info("visualisation: no evaluation images (%s); using training crops", err)
        if self._first_batch is not None:
            return self._first_batch.global_crops[0]
        return None

    @torch.no_grad()
    def log_pictures(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Path]:
        """Render and log the enabled pictures now; returns the PNG files written."""
        written: list[Path] = []
        if self.show["crops"] and self._first_batch is not None:
            picture = crops_and_masks_grid(self._first_batch, self.mean, self.std, self.num_images)
            written += log_image(trainer, "viz/crops", upscale(picture, self.min_side), self.save_files)
        if not (self.show["attention"] or self.show["pca"]):
            return written
        images = self._images(trainer)
        if images is None:
            return written
        backbone = evaluation_backbone(pl_module)
        images = images.to(pl_module.device)
        shown = denormalize(images, self.mean, self.std)
        with eval_mode(backbone):
            if self.show["attention"]:
                maps = attention_maps(backbone, images, threshold=self.attention_mass, upsample=False)
                picture = upscale(attention_figure(shown, maps), self.min_side)
                written += log_image(trainer, "viz/attention", picture, self.save_files)
            if self.show["pca"]:
                pca = backbone_pca_maps(backbone, images, self.pca_threshold)
                picture = upscale(pca_figure(shown, pca), self.min_side)
                written += log_image(trainer, "viz/pca", picture, self.save_files)
        return written
