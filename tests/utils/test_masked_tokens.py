"""Masked tokens gathered by index: the same rows as boolean indexing, and the batches carry the index."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from sslvit.data.batch import MaskedImageBatch, MultiCropBatch
from sslvit.utils.masked_tokens import gather_masked, true_indices


def test_gather_by_index_equals_boolean_indexing() -> None:
    g = torch.Generator().manual_seed(0)
    tokens, masks = torch.randn(3, 5, 4, generator=g), torch.rand(3, 5, generator=g) < 0.5
    indices = true_indices(masks)
    assert indices.dtype == torch.int64 and indices.shape == (int(masks.sum()),)
    torch.testing.assert_close(gather_masked(tokens, indices), tokens[masks], rtol=0, atol=0)
    ids = torch.randint(0, 9, (3, 5), generator=g)
    assert torch.equal(gather_masked(ids, indices), ids[masks])


def test_batches_derive_the_indices_and_keep_them_through_the_transfer() -> None:
    masks = torch.tensor([[True, False], [False, True], [True, True]])
    crops = MultiCropBatch(
        global_crops=[torch.zeros(3, 3, 2, 2)], local_crops=[], labels=torch.zeros(3), masks=masks
    )
    assert crops.mask_indices.tolist() == [0, 3, 4, 5]
    moved = move_data_to_device(crops, torch.device("cpu"))
    assert torch.equal(moved.mask_indices, crops.mask_indices)
    images = MaskedImageBatch(images=torch.zeros(3, 3, 2, 2), labels=torch.zeros(3), masks=masks)
    assert images.mask_indices.tolist() == [0, 3, 4, 5]
    assert MultiCropBatch(global_crops=[], local_crops=[], labels=torch.zeros(0)).mask_indices is None
