"""Typed batches that DataModules hand to methods (Lightning moves dataclasses between devices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from sslvit.utils.masked_tokens import true_indices

_Batch = TypeVar("_Batch")


def _pinned(batch: _Batch) -> _Batch:
    """A copy of a batch dataclass with every tensor, and every list of tensors, in pinned memory."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(batch):  # type: ignore[arg-type]
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            value = value.pin_memory()
        elif isinstance(value, list):
            value = [x.pin_memory() for x in value]
        values[field.name] = value
    return type(batch)(**values)


class _DerivesMaskIndices:
    """``mask_indices`` from ``masks`` when a batch is built without them (see :class:`MultiCropBatch`)."""

    masks: torch.Tensor | None
    mask_indices: torch.Tensor | None

    def __post_init__(self) -> None:
        if self.masks is not None and self.mask_indices is None:
            self.mask_indices = true_indices(self.masks)


@dataclass
class MultiCropBatch(_DerivesMaskIndices):
    """Crops of the same images, as produced by a multi-crop transform and collated.

    Attributes:
        global_crops: one (B,C,H,W) tensor per global view; the teacher sees only these.
        local_crops: one (B,C,h,w) tensor per local view (may be empty).
        masks: (n_global*B, N) bool, True = masked patch, rows ordered view-major like
            ``torch.cat(global_crops)``; None when the method masks nothing.
        labels: (B,) int64 class ids, -1 where the dataset has no labels. Only evaluation reads them.
        num_skipped: how many unreadable samples the loader met while building this batch (replaced
            by other samples, or dropped).
        mask_indices: (M,) int64 positions of the True entries of ``masks.flatten()``, derived from
            ``masks`` when not given. Made where the masks are (the loader's collate, on the CPU), they
            let the step gather masked tokens with ``index_select``: boolean indexing on the device would
            count the masked tokens there, a host-device sync in every step.
    """

    global_crops: list[torch.Tensor]
    local_crops: list[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    num_skipped: int = 0
    mask_indices: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.global_crops[0].shape[0]

    @property
    def num_crops(self) -> int:
        return len(self.global_crops) + len(self.local_crops)

    def pin_memory(self) -> MultiCropBatch:
        """Called by ``DataLoader(pin_memory=True)`` so host-to-GPU copies can run asynchronously."""
        return _pinned(self)


@dataclass
class MaskedImageBatch(_DerivesMaskIndices):
    """One view per image, optionally with a tokenizer view of the same crop and patch masks.

    What masked image modelling with a tokenizer needs (BEiT, Bao et al., 2022): the backbone's view,
    the tokenizer's view of the same crop at the resolution whose token grid equals the patch grid, and
    masks drawn in the loader. A tokenizer's own training (dVAE) uses ``images`` alone.

    Attributes:
        images: (B,C,H,W) the backbone's view (normalised), or the tokenizer's training images.
        labels: (B,) int64 class ids, -1 where the dataset has no labels. Only evaluation reads them.
        tokenizer_images: (B,C,h,w) pixels in [0, 1] for the tokenizer, or None.
        masks: (B,N) bool on the patch grid of ``images``, True = masked; None when nothing is masked.
        num_skipped: how many unreadable samples the loader met while building this batch (replaced
            by other samples, or dropped).
        mask_indices: (M,) int64 positions of the True entries of ``masks.flatten()`` (see
            :class:`MultiCropBatch`), derived from ``masks`` when not given.
    """

    images: torch.Tensor
    labels: torch.Tensor
    tokenizer_images: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    num_skipped: int = 0
    mask_indices: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def global_crops(self) -> list[torch.Tensor]:
        """``[images]``: the unmasked view under the multi-crop name that evaluation callbacks read."""
        return [self.images]

    def pin_memory(self) -> MaskedImageBatch:
        """Called by ``DataLoader(pin_memory=True)`` so host-to-GPU copies can run asynchronously."""
        return _pinned(self)


@dataclass
class CropSourceBatch(_DerivesMaskIndices):
    """Whole images and the multi-crop boxes to cut from them on the device (``device_stage="crops"``).

    ``sslvit.data.transforms.device_crops.crop_sources`` turns it into the :class:`MultiCropBatch` of uint8
    crops that the workers would otherwise have made; the DataModule does so after the transfer.

    Attributes:
        images: (B,3,S,S) uint8, each image (long side at most S) in the top-left corner, zeros elsewhere.
        global_boxes / local_boxes: (V,B,4) float32 ``(left, top, width, height)`` in pixels, view-major.
        global_flips / local_flips: (V,B) bool, flip that crop horizontally.
        global_size / local_size: output side of the global / local crops.
        labels, masks, num_skipped, mask_indices: as in :class:`MultiCropBatch` (masks on the global
            crops' grid).
    """

    images: torch.Tensor
    global_boxes: torch.Tensor
    local_boxes: torch.Tensor
    global_flips: torch.Tensor
    local_flips: torch.Tensor
    global_size: int
    local_size: int
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    num_skipped: int = 0
    mask_indices: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> CropSourceBatch:
        """Called by ``DataLoader(pin_memory=True)`` so host-to-GPU copies can run asynchronously."""
        return _pinned(self)
