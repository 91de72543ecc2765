import numpy as np
import pytest
import torch

from sslvit.data import MultiCropBatch, collate_eval, collate_multicrop


def _sample(label, n_global=2, n_local=3):
    globals_ = [torch.full((3, 16, 16), float(label)) for _ in range(n_global)]
    locals_ = [torch.zeros(3, 8, 8) for _ in range(n_local)]
    return (globals_, locals_), label


def test_shapes_labels_and_skipped():
    batch = collate_multicrop([_sample(1), None, _sample(2), _sample(3), None])
    assert isinstance(batch, MultiCropBatch)
    assert batch.num_skipped == 2 and batch.batch_size == 3 and batch.num_crops == 5
    assert [c.shape for c in batch.global_crops] == [(3, 3, 16, 16)] * 2
    assert [c.shape for c in batch.local_crops] == [(3, 3, 8, 8)] * 3
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [1, 2, 3]
    assert batch.global_crops[1][2].unique().tolist() == [3.0]  # sample order kept
    assert batch.masks is None


def test_masks_are_drawn_on_the_global_grid():
    calls = []

    def mask_fn(n, grid):
        calls.append((n, grid))
        return np.arange(n * grid[0] * grid[1]).reshape(n, -1) % 2 == 0  # numpy is accepted

    batch = collate_multicrop([_sample(0), _sample(1), None], mask_fn=mask_fn, patch_size=4)
    assert calls == [(4, (4, 4))]  # 2 kept samples x 2 global views, 16 px / patch 4
    assert batch.masks is not None
    assert batch.masks.dtype == torch.bool and batch.masks.shape == (4, 16)
    assert batch.masks[0, :3].tolist() == [True, False, True]


def test_mask_errors():
    with pytest.raises(ValueError, match="patch_size"):
        collate_multicrop([_sample(0)], mask_fn=lambda n, g: torch.zeros(n, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected"):
        collate_multicrop([_sample(0)], mask_fn=lambda n, g: torch.zeros(n, 5), patch_size=4)


def test_all_unreadable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="all 2 samples"):
        collate_multicrop([None, None])


def test_collate_eval_drops_none():
    samples = [(torch.ones(3, 4, 4), 5, 10), None, (torch.zeros(3, 4, 4), 6, 12)]
    images, labels, indices = collate_eval(samples)
    assert images.shape == (2, 3, 4, 4)
    assert labels.tolist() == [5, 6] and indices.tolist() == [10, 12]
    assert labels.dtype == indices.dtype == torch.int64
