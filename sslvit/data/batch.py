"""Typed batches that DataModules hand to methods (Lightning moves dataclasses between devices)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MultiCropBatch:
    """Crops of the same images, as produced by a multi-crop transform and collated.

    Attributes:
        global_crops: one (B,C,H,W) tensor per global view; the teacher sees only these.
        local_crops: one (B,C,h,w) tensor per local view (may be empty).
        masks: (n_global*B, N) bool, True = masked patch, rows ordered view-major like
            ``torch.cat(global_crops)``; None when the method masks nothing.
        labels: (B,) int64 class ids, -1 where the dataset has no labels. Only evaluation reads them.
        num_skipped: how many unreadable samples the loader dropped while building this batch.
    """

    global_crops: list[torch.Tensor]
    local_crops: list[torch.Tensor]
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    num_skipped: int = 0

    @property
    def batch_size(self) -> int:
        return self.global_crops[0].shape[0]

    @property
    def num_crops(self) -> int:
        return len(self.global_crops) + len(self.local_crops)

    def pin_memory(self) -> MultiCropBatch:
        """Called by ``DataLoader(pin_memory=True)`` so host-to-GPU copies can run asynchronously."""
        return MultiCropBatch(
            global_crops=[x.pin_memory() for x in self.global_crops],
            local_crops=[x.pin_memory() for x in self.local_crops],
            labels=self.labels.pin_memory(),
            masks=None if self.masks is None else self.masks.pin_memory(),
            num_skipped=self.num_skipped,
        )
