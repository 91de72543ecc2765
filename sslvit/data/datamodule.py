"""The LightningDataModule every self-supervised method trains from."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from sslvit.data.batch import CropSourceBatch, MultiCropBatch
from sslvit.data.collate import MaskFn, collate_eval
from sslvit.data.resumable import ResumableDataLoader, ResumableSampler, SeededCollate, SeededSamples
from sslvit.data.transformed import ImageDataset, IndexedEvalDataset, ReducedDecoding, TransformedDataset
from sslvit.data.transforms.device_crops import crop_sources
from sslvit.data.transforms.train_transform import TrainTransform
from sslvit.utils.distributed import is_distributed, rank, world_size


class SSLDataModule(L.LightningDataModule):
    """Multi-crop pretraining batches plus deterministic, labelled evaluation loaders.

    ``train_dataloader`` yields the batches the transform's ``collate`` builds (masks drawn in the
    workers when ``masking`` is set): :class:`~sslvit.data.batch.MultiCropBatch` from the multi-crop
    transform, :class:`~sslvit.data.batch.MaskedImageBatch` from the single-crop ones. After a batch
    reaches the training device, the transform's ``device_ops`` finish it. Evaluation callbacks (k-NN,
    linear probe) call :meth:`eval_dataloader`, which yields ``(images, labels, indices)`` from a fixed
    subset; there is no ``val_dataloader``.

    Args:
        train_set: pretraining dataset, ``[i] -> (PIL image, label) | None`` (labels may be -1).
        transform: the pretraining transform (:class:`~sslvit.data.transforms.TrainTransform`).
        batch_size: per-device pretraining batch size.
        num_workers: DataLoader worker processes (0 = load in the main process).
        patch_size: the backbone's patch size; crop sizes must be multiples of it and masks use the
            grid ``global_crop_size // patch_size``. None without a ViT (a pixel tokenizer's training):
            no grid, so no masks.
        eval_train_set: labelled dataset for the k-NN bank / probe training, or None.
        eval_val_set: labelled dataset for the k-NN queries / probe evaluation, or None.
        eval_transform: deterministic ``image -> tensor``; required when an evaluation set is given.
        masking: optional ``(n, (grid_h, grid_w)) -> (n, N)`` bool mask generator, called in collate.
        eval_batch_size: evaluation batch size.
        eval_train_samples: evaluate on this many ``eval_train_set`` samples (None = all): the first N of
            a permutation seeded by ``seed``, so every run and every rank uses the same subset.
        eval_val_samples: the same for ``eval_val_set``.
        pin_memory: pin the training and evaluation batches in page-locked memory, so that their
            copies to a GPU run asynchronously; None: when CUDA is available.
        persistent_workers: keep the training workers alive between epochs (only with workers).
        drop_last: drop the last incomplete training batch (keeps per-step batch statistics comparable).
        seed: seed of the evaluation subsets.
        root: config convenience that dataset configs interpolate (``${data.root}``); only stored.
        val_root: the same for a separate validation folder.
        labelled: the same for whether a folder has class sub-folders.
        on_bad_image: the same for the folder datasets' policy on unreadable files (skip / fail).
        in_chans: channels of every image (``data.in_chans``, which the backbone reads too); the
            datasets and transforms that state a channel count must agree with it.
        scale / scale_percentiles: config conveniences for the folder datasets' array scaling
            (``data.scale``); only stored.

    Raises:
        ValueError: bad sizes, crops that are not whole patch grids, evaluation sets without an
            ``eval_transform``, or a dataset / transform built for another channel count than
            ``in_chans``.
    """

    def __init__(
        self,
        train_set: ImageDataset,
        transform: TrainTransform,
        batch_size: int,
        num_workers: int,
        patch_size: int | None,
        eval_train_set: ImageDataset | None = None,
        eval_val_set: ImageDataset | None = None,
        eval_transform: Callable[[Any], torch.Tensor] | None = None,
        masking: MaskFn | None = None,
        eval_batch_size: int = 256,
        eval_train_samples: int | None = None,
        eval_val_samples: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        root: str | None = None,
        val_root: str | None = None,
        labelled: bool | None = None,
        on_bad_image: str | None = None,
        in_chans: int = 3,
        scale: str | None = None,
        scale_percentiles: Any = None,
    ) -> None:
        super().__init__()
        if (
            batch_size < 1
            or eval_batch_size < 1
            or num_workers < 0
            or (patch_size is not None and patch_size < 1)
        ):
            raise ValueError(
                f"need batch_size, eval_batch_size, patch_size >= 1 and num_workers >= 0, got {batch_size}, "
                f"{eval_batch_size}, {patch_size}, {num_workers}"
            )
        for name, size in transform.crop_sizes.items():
            if patch_size is not None and size % patch_size:
                raise ValueError(f"transform {name}={size} is not a multiple of patch_size={patch_size}")
        if (eval_train_set is not None or eval_val_set is not None) and eval_transform is None:
            raise ValueError("evaluation datasets were given without an eval_transform")
        # A transform that shrinks every image to a long side lets the JPEG decoder do most of that
        # (DCT scaling), several times faster on large photos (docs/benchmarks.md); a copy, so the
        # dataset given stays as it was.
        if transform.decode_max_side is not None and isinstance(train_set, ReducedDecoding):
            train_set = train_set.with_decode_max_side(transform.decode_max_side)
        self.train_set = train_set
        self.transform = transform
        self._batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.patch_size = None if patch_size is None else int(patch_size)
        self.eval_sets = {"train": eval_train_set, "val": eval_val_set}
        self.eval_samples = {"train": eval_train_samples, "val": eval_val_samples}
        self.eval_transform = eval_transform
        self.masking = masking
        self.eval_batch_size = int(eval_batch_size)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        self.seed = seed
        self.root, self.val_root, self.labelled = root, val_root, labelled
        self.on_bad_image = on_bad_image
        self.in_chans = int(in_chans)
        self.scale, self.scale_percentiles = scale, scale_percentiles
        _check_channels(
            self.in_chans,
            {"train_set": train_set, "transform": transform, "eval_train_set": eval_train_set,
             "eval_val_set": eval_val_set, "eval_transform": eval_transform},
        )  # fmt: skip
        self._num_classes = _shared_num_classes(eval_train_set, eval_val_set)

    @property
    def batch_size(self) -> int:
        """Per-device pretraining batch size."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:  # Lightning's batch-size tuner assigns it
        self._batch_size = int(value)

    @property
    def has_labels(self) -> bool:
        """True when both evaluation splits exist and carry class labels (k-NN / probes can run)."""
        return self._num_classes > 0

    @property
    def num_classes(self) -> int:
        """Number of classes of the evaluation sets; 0 when :attr:`has_labels` is False."""
        return self._num_classes

    def train_dataloader(self) -> DataLoader:
        if self.drop_last and len(self.train_set) < self.batch_size:
            raise ValueError(
                f"train set has {len(self.train_set)} samples, fewer than batch_size={self.batch_size} "
                "with drop_last=true: no batch would be produced"
            )
        collate = functools.partial(self.transform.collate, mask_fn=self.masking, patch_size=self.patch_size)
        # A resumable loader: shuffled by (seed, epoch), augmentations seeded per sample, its position
        # stored in checkpoints, so a run resumed mid-epoch sees the batches of the uninterrupted run.
        # The order seed follows Lightning's convention for its own DistributedSampler (the global
        # seed), identical on every rank.
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        dataset = TransformedDataset(self.train_set, self.transform)
        sampler = ResumableSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
        return ResumableDataLoader(
            SeededSamples(dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=SeededCollate(collate),
            pin_memory=self.pin_memory,
            drop_last=self.drop_last,
            persistent_workers=self.persistent_workers,
            generator=torch.Generator().manual_seed(seed),  # worker seeds without touching torch's RNG
            position_fn=self._train_position,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish multi-crop batches on the device: cut the crops, run the ops the transform left there."""
        device_ops = self.transform.device_ops
        if isinstance(batch, CropSourceBatch):  # device_stage=crops: cut the crops here first
            batch = crop_sources(batch)
        if device_ops is None or not isinstance(batch, MultiCropBatch):
            return batch
        # Seeded by (global seed, epoch, batch of the epoch, rank): a resumed run redraws the same jitter.
        epoch, index = self._train_position()
        seed = hash((int(os.environ.get("PL_GLOBAL_SEED", 0)), epoch, index, rank())) % 2**62
        device = batch.global_crops[0].device
        generator = torch.Generator(device=device).manual_seed(seed)
        batch.global_crops, batch.local_crops = device_ops(batch.global_crops, batch.local_crops, generator)
        return batch

    def _train_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) of the fit loop; the next epoch at its end."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        # `processed` counts a batch once its step (and on_train_batch_end) ran: what a checkpoint holds.
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)  # type: ignore[attr-defined]
        if done >= trainer.num_training_batches:
            return trainer.current_epoch + 1, 0
        return trainer.current_epoch, done

    def eval_indices(self, split: Literal["train", "val"]) -> list[int]:
        """Sorted indices of the evaluation subset of ``split`` (all indices when no limit is set)."""
        dataset = self._eval_set(split)
        limit = self.eval_samples[split]
        if limit is None or limit >= len(dataset):
            return list(range(len(dataset)))
        generator = torch.Generator().manual_seed(self.seed)
        return sorted(torch.randperm(len(dataset), generator=generator)[: int(limit)].tolist())

    def eval_dataloader(self, split: Literal["train", "val"]) -> DataLoader:
        """Loader of ``(images (B,C,H,W), labels (B,) int64, indices (B,) int64)`` over the eval subset.

        Under ``torch.distributed`` each rank gets a shard (``DistributedSampler(shuffle=False)``, which
        pads by repeating samples; de-duplicate gathered results by ``indices``).
        """
        assert self.eval_transform is not None  # checked in __init__ whenever an eval set exists
        dataset = IndexedEvalDataset(self._eval_set(split), self.eval_transform, self.eval_indices(split))
        # Lightning only shards the loaders it owns; callbacks call this one directly.
        sampler: DistributedSampler | None = None
        if is_distributed():
            sampler = DistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_eval,
            pin_memory=self.pin_memory,
            drop_last=False,
        )

    def _eval_set(self, split: str) -> ImageDataset:
        if split not in self.eval_sets:
            raise ValueError(f"evaluation split must be 'train' or 'val', got {split!r}")
        dataset = self.eval_sets[split]
        if dataset is None:
            raise ValueError(f"no evaluation dataset for split {split!r} (data.eval_{split}_set is null)")
        return dataset


def _check_channels(in_chans: int, parts: dict[str, Any]) -> None:
    """Every part that states a channel count (an ``in_chans`` attribute) states ``in_chans``."""
    for name, part in parts.items():
        stated = getattr(part, "in_chans", None)
        if stated is not None and int(stated) != in_chans:
            raise ValueError(
                f"data.{name} is built for {stated} channels but data.in_chans={in_chans}: let it read "
                "${data.in_chans}"
            )


def _shared_num_classes(train_set: Any, val_set: Any) -> int:
    """Class count of the two evaluation sets; 0 unless both exist and are labelled alike."""
    if train_set is None or val_set is None:
        return 0
    train_classes, val_classes = getattr(train_set, "classes", None), getattr(val_set, "classes", None)
    if train_classes is not None and val_classes is not None and list(train_classes) != list(val_classes):
        raise ValueError(
            f"eval_train_set and eval_val_set have different classes ({len(train_classes)} vs "
            f"{len(val_classes)}); their label ids would not match"
        )
    return len(train_classes) if train_classes is not None else 0
