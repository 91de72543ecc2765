"""Collate functions: stack crops into typed batches, drop unreadable samples, draw masks in the loader.

Masks are drawn here, in the DataLoader workers, rather than in the model: mask generation is CPU work
that overlaps with the GPU step, and the same masks then reach every device-side consumer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sslvit.data.batch import MaskedImageBatch, MultiCropBatch

# mask_fn(num_masks, (grid_h, grid_w)) -> (num_masks, grid_h * grid_w) bool, True = masked.
MaskFn = Callable[[int, tuple[int, int]], Any]
MultiCropSample = tuple[tuple[list[torch.Tensor], list[torch.Tensor]], int]
# ((image view, tokenizer view or None), label)
ViewsSample = tuple[tuple[torch.Tensor, torch.Tensor | None], int]


def collate_multicrop(
    samples: Sequence[MultiCropSample | None],
    mask_fn: MaskFn | None = None,
    patch_size: int | None = None,
) -> MultiCropBatch:
    """Stack ``((global_crops, local_crops), label)`` samples into a :class:`MultiCropBatch`.

    ``None`` samples (unreadable files) are dropped and counted in ``num_skipped``. With ``mask_fn``,
    one mask per global crop is drawn on the global crops' patch grid and stored view-major, matching
    ``torch.cat(batch.global_crops)``.

    Args:
        samples: the dataset items of one batch; None for an item that could not be read.
        mask_fn: optional callable ``(n, (grid_h, grid_w)) -> (n, grid_h * grid_w)`` bool (tensor or
            array), True = masked, with ``n = batch_size * num_global_crops``.
        patch_size: backbone patch size, needed with ``mask_fn`` to turn crop sizes into a grid.

    Raises:
        RuntimeError: every sample of the batch was unreadable (nothing to train on; see the warnings).
        ValueError: ``mask_fn`` without ``patch_size``, or masks of the wrong shape.
    """
    kept = readable(samples)
    num_global, num_local = len(kept[0][0][0]), len(kept[0][0][1])
    global_crops = [stack_crops([s[0][0][v] for s in kept]) for v in range(num_global)]
    local_crops = [stack_crops([s[0][1][v] for s in kept]) for v in range(num_local)]
    labels = torch.tensor([int(s[1]) for s in kept], dtype=torch.int64)
    masks = None
    if mask_fn is not None:
        masks = draw_masks(
            mask_fn, num_global * len(kept), global_crops[0].shape[-2:], patch_size, "collate_multicrop"
        )
    return MultiCropBatch(
        global_crops=global_crops,
        local_crops=local_crops,
        labels=labels,
        masks=masks,
        num_skipped=len(samples) - len(kept),
    )


def stack_crops(crops: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack one view's crops. A folder mixing pictures (uint8 crops) and array files (float crops in
    [0, 1]) gives both kinds in a batch: then the uint8 ones are divided by 255 and all stay float."""
    if len({crop.dtype for crop in crops}) > 1:
        crops = [crop.float() / 255 if crop.dtype == torch.uint8 else crop.float() for crop in crops]
    return torch.stack(list(crops))


def readable(samples: Sequence[Any]) -> list[Any]:
    """The samples that could be read (not None); fails when none of the batch could be."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise RuntimeError(
            f"all {len(samples)} samples of a batch were unreadable; see the 'skipping unreadable "
            "image' warnings for their paths"
        )
    return kept


def draw_masks(
    mask_fn: MaskFn, num_masks: int, image_size: Sequence[int], patch_size: int | None, caller: str
) -> torch.Tensor:
    """``(num_masks, h*w)`` bool masks from ``mask_fn`` on the patch grid of ``image_size (H, W)``."""
    if patch_size is None:
        raise ValueError(f"{caller}: mask_fn needs patch_size to size the mask grid")
    height, width = image_size
    grid = (height // patch_size, width // patch_size)
    drawn = mask_fn(num_masks, grid)
    masks = (drawn if isinstance(drawn, torch.Tensor) else torch.from_numpy(np.asarray(drawn))).bool()
    if masks.shape != (num_masks, grid[0] * grid[1]):
        raise ValueError(
            f"mask_fn returned shape {tuple(masks.shape)}, expected {(num_masks, grid[0] * grid[1])}"
        )
    return masks


def collate_views(
    samples: Sequence[ViewsSample | None],
    mask_fn: MaskFn | None = None,
    patch_size: int | None = None,
) -> MaskedImageBatch:
    """Stack ``((image, tokenizer view | None), label)`` samples into a :class:`MaskedImageBatch`.

    The collate of single-crop transforms (:class:`~sslvit.data.transforms.BEiTTransform`,
    :class:`~sslvit.data.transforms.SingleCropTransform`). ``None`` samples are dropped and counted;
    with ``mask_fn``, one mask per image is drawn on the patch grid of the image view.

    Raises:
        RuntimeError: every sample of the batch was unreadable.
        ValueError: ``mask_fn`` without ``patch_size``, or masks of the wrong shape.
    """
    kept = readable(samples)
    images = torch.stack([s[0][0] for s in kept])
    tokenizer_views = [s[0][1] for s in kept]
    tokenizer_images = None if tokenizer_views[0] is None else torch.stack(tokenizer_views)  # type: ignore[arg-type]
    masks = (
        None
        if mask_fn is None
        else draw_masks(mask_fn, len(kept), images.shape[-2:], patch_size, "collate_views")
    )
    return MaskedImageBatch(
        images=images,
        labels=torch.tensor([int(s[1]) for s in kept], dtype=torch.int64),
        tokenizer_images=tokenizer_images,
        masks=masks,
        num_skipped=len(samples) - len(kept),
    )


def collate_eval(
    samples: Sequence[tuple[torch.Tensor, int, int] | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``(image, label, index)`` triples into ``(images (B,C,H,W), labels (B,), indices (B,))``.

    ``None`` samples (unreadable files) are dropped; consumers match features to samples by ``indices``.

    Raises:
        RuntimeError: every sample of the batch was unreadable.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        raise RuntimeError(f"all {len(samples)} samples of an evaluation batch were unreadable")
    images = torch.stack([s[0] for s in kept])
    labels = torch.tensor([int(s[1]) for s in kept], dtype=torch.int64)
    indices = torch.tensor([int(s[2]) for s in kept], dtype=torch.int64)
    return images, labels, indices
