import pickle

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DistributedSampler

from sslvit.data import EvalTransform, FakeDataset, ImageFolderDataset, MultiCropTransform, SSLDataModule

HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def every_third_masked(n, grid):
    """Module-level, so the collate function stays picklable for spawned workers."""
    return torch.arange(grid[0] * grid[1]).expand(n, -1) % 3 == 0


def _datamodule(**overrides):
    kwargs = dict(
        train_set=FakeDataset(64, 32, 4, seed=0),
        transform=MultiCropTransform(32, 16, 2, **HALF),
        batch_size=8,
        num_workers=0,
        patch_size=8,
        eval_train_set=FakeDataset(100, 32, 4, seed=0),
        eval_val_set=FakeDataset(40, 32, 4, seed=1),
        eval_transform=EvalTransform(32, **HALF),
        eval_batch_size=16,
    )
    return SSLDataModule(**{**kwargs, **overrides})


def test_train_loader_batches():
    dm = _datamodule(masking=every_third_masked)
    loader = dm.train_dataloader()
    assert len(loader) == 8  # 64 samples / 8, drop_last
    batch = next(iter(loader))
    assert batch.batch_size == 8 and batch.num_crops == 4
    assert [c.shape for c in batch.global_crops] == [(8, 3, 32, 32)] * 2
    assert [c.shape for c in batch.local_crops] == [(8, 3, 16, 16)] * 2
    assert batch.masks.shape == (16, 16) and batch.masks[:, 0].all() and not batch.masks[:, 1].any()
    assert ((batch.labels >= 0) & (batch.labels < 4)).all()
    pickle.dumps(loader.collate_fn)
    assert dm.batch_size == 8 and dm.has_labels and dm.num_classes == 4


def test_train_loader_with_a_worker():
    dm = _datamodule(num_workers=1)
    assert dm.persistent_workers
    batches = list(dm.train_dataloader())
    assert len(batches) == 8 and batches[-1].global_crops[0].shape == (8, 3, 32, 32)
    assert not _datamodule(num_workers=0, persistent_workers=True).persistent_workers


def test_unreadable_files_are_counted_in_the_batch(tmp_path):
    for i in range(4):
        Image.new("RGB", (20, 20), (i * 50, 0, 0)).save(tmp_path / f"ok{i}.png")
    jpeg = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:150])
    (tmp_path / "text.jpg").write_text("not an image")
    dm = _datamodule(train_set=ImageFolderDataset(tmp_path, labelled=False), batch_size=6)
    (batch,) = list(dm.train_dataloader())
    # Each unreadable sample is replaced by a random one (which may itself be unreadable: counted too).
    assert batch.num_skipped >= 2 and batch.batch_size == 6
    assert batch.labels.tolist() == [-1] * 6


def test_a_batch_of_only_unreadable_files_is_refilled(tmp_path):
    # The user's report: "all 2 samples of a batch were unreadable" ended the run under on_bad_image=skip.
    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "ok.png")
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    dm = _datamodule(train_set=ImageFolderDataset(tmp_path, labelled=False), batch_size=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # at least one of them drew two empty files
    assert [b.batch_size for b in batches] == [2, 2]  # same shapes on every rank, whatever is broken
    assert sum(b.num_skipped for b in batches) >= 3


def test_eval_loader_subset_is_deterministic():
    dm = _datamodule(eval_train_samples=30, eval_val_samples=1000)
    indices = dm.eval_indices("train")
    assert len(indices) == 30 and indices == sorted(indices) and len(set(indices)) == 30
    assert indices == _datamodule(eval_train_samples=30).eval_indices("train")
    assert indices != _datamodule(eval_train_samples=30, seed=1).eval_indices("train")
    assert dm.eval_indices("val") == list(range(40))  # limit above the size = everything
    seen = []
    for images, labels, idx in dm.eval_dataloader("train"):
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == idx.dtype == torch.int64
        assert (labels == idx % 4).all()  # FakeDataset label of sample i is i % 4
        seen += idx.tolist()
    assert seen == indices


def test_eval_loader_is_the_same_every_time():
    dm = _datamodule(eval_val_samples=8)
    first = next(iter(dm.eval_dataloader("val")))[0]
    torch.manual_seed(123)
    torch.testing.assert_close(next(iter(dm.eval_dataloader("val")))[0], first)


def test_eval_loader_shards_under_distributed(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        loader = _datamodule().eval_dataloader("val")
        assert isinstance(loader.sampler, DistributedSampler) and not loader.sampler.shuffle
    finally:
        dist.destroy_process_group()
    assert not isinstance(_datamodule().eval_dataloader("val").sampler, DistributedSampler)


def test_labels_and_missing_splits():
    dm = _datamodule(eval_val_set=None)
    assert not dm.has_labels and dm.num_classes == 0
    with pytest.raises(ValueError, match="no evaluation dataset for split 'val'"):
        dm.eval_dataloader("val")
    with pytest.raises(ValueError, match="'train' or 'val'"):
        dm.eval_dataloader("test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different classes"):
        _datamodule(eval_val_set=FakeDataset(10, 32, 3))


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="local_crop_size=12 is not a multiple of patch_size=8"):
        _datamodule(transform=MultiCropTransform(32, 12, 2))
    with pytest.raises(ValueError, match="eval_transform"):
        _datamodule(eval_transform=None)
    with pytest.raises(ValueError, match="fewer than batch_size=128"):
        _datamodule(batch_size=128).train_dataloader()
