"""The resumable training loader: shards, per-epoch order, per-sample seeds, skip-on-resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sslvit.data import FakeDataset, MultiCropTransform, SSLDataModule
from sslvit.data.masking import MaskGenerator
from sslvit.data.resumable import ResumableDataLoader, ResumableSampler, SeededSamples


def indices(sampler: ResumableSampler) -> list[int]:
    return [index for index, _ in sampler]


def test_ranks_get_disjoint_shards_of_one_epoch_permutation():
    data = list(range(10))
    ranks = [ResumableSampler(data, num_replicas=2, rank=r, seed=3) for r in range(2)]
    shards = [indices(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == data
    single = indices(ResumableSampler(data, num_replicas=1, rank=0, seed=3))
    assert single != data  # shuffled
    assert indices(ResumableSampler(data, num_replicas=1, rank=0, seed=3)) == single  # reproducible
    later = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    later.set_epoch(1)
    assert indices(later) != single  # a new order every epoch


def test_sample_seeds_depend_on_seed_epoch_and_index_only():
    data = list(range(8))
    one = dict(ResumableSampler(data, num_replicas=1, rank=0, seed=5))
    two = {**dict(ResumableSampler(data, 2, 0, seed=5)), **dict(ResumableSampler(data, 2, 1, seed=5))}
    assert one == two  # sample i gets the same augmentation however the data is sharded
    assert len(set(one.values())) == 8
    other = ResumableSampler(data, num_replicas=1, rank=0, seed=5)
    other.set_epoch(1)
    assert set(dict(other).values()).isdisjoint(one.values())


def test_resume_skips_only_within_the_saved_epoch():
    data = list(range(12))
    full = indices(ResumableSampler(data, 1, 0, seed=0))
    sampler = ResumableSampler(data, 1, 0, seed=0)
    sampler.resume_at(epoch=0, samples_done=8)
    assert indices(sampler) == full[8:]
    assert indices(sampler) == full  # once only
    sampler.resume_at(epoch=0, samples_done=8)
    sampler.set_epoch(1)  # Lightning moved on to another epoch: no skip there
    nxt = ResumableSampler(data, 1, 0, seed=0)
    nxt.set_epoch(1)
    assert indices(sampler) == indices(nxt)


def test_seeded_samples_repeat_augmentations_and_leave_the_global_rng_alone():
    transform = MultiCropTransform(global_crop_size=16, local_crop_size=8, num_local_crops=1)
    images = FakeDataset(num_samples=1, image_size=16)

    class Apply:
        def __getitem__(self, index):
            image, label = images[index]
            return transform(image), label

    seeded = SeededSamples(Apply())
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    (a, _), (b, _), (c, _) = seeded[(0, 7)], seeded[(0, 7)], seeded[(0, 8)]
    assert torch.equal(torch.rand(3), expected_next)  # loading consumed none of torch's numbers
    assert all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert not torch.equal(a[0][0], c[0][0])


def test_loader_state_round_trip():
    data = list(range(20))
    position = {"value": (1, 3)}

    def make(num_replicas: int = 1) -> ResumableDataLoader:
        sampler = ResumableSampler(data, num_replicas=num_replicas, rank=0, seed=9)
        return ResumableDataLoader(
            SeededSamples(data), batch_size=2, sampler=sampler, position_fn=lambda: position["value"]
        )

    state = make().state_dict()
    assert state == {"epoch": 1, "samples_done": 6, "seed": 9, "num_replicas": 1}
    resumed = make()
    resumed.load_state_dict(state)
    reference = make()
    reference.sampler.set_epoch(1)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in reference][3:]
    other_layout = make(num_replicas=2)
    other_layout.load_state_dict(state)  # another world size: restart the epoch, do not skip
    assert len(list(other_layout)) == 5


def test_datamodule_position_rolls_over_at_epoch_end():
    dm = SSLDataModule(
        train_set=FakeDataset(num_samples=16, image_size=16),
        transform=MultiCropTransform(global_crop_size=16, local_crop_size=8, num_local_crops=1),
        batch_size=4,
        num_workers=0,
        patch_size=4,
    )
    loader = dm.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, ResumableSampler)
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    dm.trainer = SimpleNamespace(
        current_epoch=3,
        num_training_batches=4,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
    )
    assert dm._train_position() == (3, 2)
    progress.current.processed = 4
    assert dm._train_position() == (4, 0)


def test_resumed_loader_draws_the_masks_of_the_uninterrupted_run():
    def make() -> ResumableDataLoader:
        dm = SSLDataModule(
            train_set=FakeDataset(num_samples=24, image_size=16),
            transform=MultiCropTransform(global_crop_size=16, local_crop_size=8, num_local_crops=1),
            batch_size=4,
            num_workers=0,
            patch_size=4,
            masking=MaskGenerator(mode="block", ratio_min=0.1, ratio_max=0.5),
        )
        loader = dm.train_dataloader()
        assert isinstance(loader, ResumableDataLoader)
        return loader

    torch.manual_seed(0)
    uninterrupted = [batch.masks.clone() for batch in make()]
    torch.manual_seed(1)  # the resumed process starts from another global RNG state
    resumed = make()
    resumed.load_state_dict({"epoch": 0, "samples_done": 8, "seed": 0, "num_replicas": 1})
    masks_after_resume = [batch.masks for batch in resumed]
    assert len(masks_after_resume) == len(uninterrupted) - 2
    assert all(torch.equal(a, b) for a, b in zip(masks_after_resume, uninterrupted[2:]))
    # Masks still differ from batch to batch (the per-batch seed is not one fixed seed).
    assert not all(torch.equal(uninterrupted[0], m) for m in uninterrupted[1:])


def test_unreadable_samples_are_replaced_by_seeded_draws_and_counted():
    readable = {3: "three", 5: "five"}

    class HalfBroken:
        def __len__(self):
            return 8

        def __getitem__(self, index):
            return readable.get(index)

    seeded = SeededSamples(HalfBroken(), replacement_draws=64)
    keys = [(0, 11), (3, 12), (1, 13)]
    batch = seeded.__getitems__(keys)
    assert batch[1] == "three"
    assert batch[0] in readable.values() and batch[2] in readable.values()
    assert batch.num_unreadable >= 2
    assert list(seeded.__getitems__(keys)) == list(batch)  # a function of the keys: a resumed run agrees

    hopeless = SeededSamples(HalfBroken(), replacement_draws=0)
    with pytest.raises(RuntimeError, match=r"all 2 samples of a batch and 0 replacement draws"):
        hopeless.__getitems__([(0, 1), (1, 2)])
