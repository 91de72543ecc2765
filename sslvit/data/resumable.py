"""A training loader that can resume in the middle of an epoch and reproduce the interrupted run.

Three pieces make a resumed run draw the same batches, with the same augmentations, as an uninterrupted
one:

* :class:`ResumableSampler` shuffles with a generator seeded by ``(seed, epoch)`` (like torch's
  ``DistributedSampler``, which it extends, so Lightning leaves it alone under DDP) and can start an
  epoch ``k`` batches in, skipping indices rather than decoding images.
* :class:`SeededSamples` runs each sample's augmentations under its own seed ``f(seed, epoch, index)``,
  so crops do not depend on which process, worker or prefetch order produced them.
* :class:`SeededCollate` runs the collate function (which draws the masks) under a seed mixed from the
  batch's sample seeds, so masks are a function of the batch too.
* :class:`ResumableDataLoader` implements ``state_dict`` / ``load_state_dict``: Lightning stores the
  loader state in every checkpoint and restores it before the first batch of the resumed run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sslvit.utils.seeding import mix_seed


class ResumableSampler(DistributedSampler):
    """Shuffled (or ordered) indices of this rank's shard, each paired with a per-sample seed.

    Yields ``(index, sample_seed)`` pairs for :class:`SeededSamples`. Works with no process group
    (``num_replicas=1, rank=0``) and under DDP (every rank must pass the same ``seed``).

    Args:
        dataset: the dataset to sample from (only its length is used).
        num_replicas: number of ranks.
        rank: this rank.
        shuffle: shuffle per epoch (permutation seeded by ``seed + epoch``).
        seed: shared seed of the order and of the per-sample augmentation seeds.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self._resume_epoch: int | None = None
        self._resume_skip = 0

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Start epoch ``epoch`` at ``samples_done`` (this rank's samples already consumed), once."""
        self.set_epoch(epoch)
        self._resume_epoch, self._resume_skip = epoch, max(0, int(samples_done))

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        start = 0
        if self._resume_epoch == self.epoch:
            start = min(self._resume_skip, len(indices))
        self._resume_epoch, self._resume_skip = None, 0
        for index in indices[start:]:
            yield index, mix_seed(self.seed, self.epoch, index)


class SeededSamples(Dataset):
    """``dataset[(index, seed)]``: ``dataset[index]`` with torch's global generator seeded by ``seed``.

    The transforms draw from torch's global generator; forking it keeps that of the calling process
    untouched, so loading data never shifts the random numbers of the training step.

    A sample the dataset cannot read (None) is replaced, when a whole batch is fetched, by another one
    drawn at random with a seed derived from the unreadable sample's: batches keep their full size, so
    every DDP rank runs the same steps with the same shapes whatever files are broken, and the draws are
    a function of the batch (a resumed run redraws them). The batch counts the unreadable samples it met
    (``num_unreadable``), which :class:`SeededCollate` adds to the collated batch's ``num_skipped``.

    Args:
        dataset: ``[index] -> sample | None``.
        replacement_draws: how many random samples to try for each unreadable one before leaving it
            out (the collate function then drops it).
    """

    def __init__(self, dataset: Any, replacement_draws: int = 16) -> None:
        self.dataset = dataset
        self.replacement_draws = replacement_draws

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, int):
            return self.dataset[key]
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

    def __getitems__(self, keys: list[Any]) -> SeededBatch:
        # DataLoader fetches a whole batch through this method when it exists and hands the result to
        # the collate function: the batch carries a seed mixed from its samples' seeds.
        batch = SeededBatch(self[key] for key in keys)
        seeds = [key[1] for key in keys if isinstance(key, tuple)]
        batch.seed = mix_seed(*seeds) if seeds else None
        for position, key in enumerate(keys):
            if batch[position] is None:
                batch[position] = self._replacement(key, batch)
        if all(sample is None for sample in batch):
            raise RuntimeError(
                f"all {len(batch)} samples of a batch and {self.replacement_draws} replacement draws for "
                "each were unreadable; see the 'skipping unreadable image' warnings for their paths"
            )
        return batch

    def _replacement(self, key: int | tuple[int, int], batch: SeededBatch) -> Any:
        """A readable sample in place of the unreadable ``key``, or None after ``replacement_draws``."""
        seed = key[1] if isinstance(key, tuple) else mix_seed(key)
        batch.num_unreadable += 1
        for draw in range(self.replacement_draws):
            sample = self[(mix_seed(seed, draw) % len(self), mix_seed(seed, draw, 1))]
            if sample is not None:
                return sample
            batch.num_unreadable += 1
        batch.num_unreadable -= 1  # the last one stays in the batch as None: the collate counts it
        return None


class SeededBatch(list):
    """The samples of one batch, the seed their collate function runs under (None: unseeded), and how
    many unreadable samples were replaced while fetching it."""

    seed: int | None = None
    num_unreadable: int = 0


class SeededCollate:
    """Runs a collate function under its batch's seed, so what it draws (masks) is a function of the batch.

    Masks are drawn in the collate function from the worker's generator; without this, a run resumed
    mid-epoch (other worker seeds, streams at other positions) would see other masks than the
    uninterrupted run. Torch's generator of the worker is restored afterwards. Unreadable samples that
    were replaced while fetching the batch are added to the collated batch's ``num_skipped``.
    """

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, samples: list[Any]) -> Any:
        seed = getattr(samples, "seed", None)
        if seed is None:
            collated = self.collate(samples)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                collated = self.collate(list(samples))
        replaced = getattr(samples, "num_unreadable", 0)
        if replaced:
            collated.num_skipped += replaced
        return collated


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler` whose position is saved in checkpoints.

    Lightning calls :meth:`state_dict` when it writes a checkpoint and :meth:`load_state_dict` before
    iterating in the resumed run. The position is read from the trainer (``position_fn``), not counted
    here: batches prefetched by Lightning or by workers were produced but not trained on.

    Args:
        position_fn: ``() -> (epoch, batches_done_in_epoch)`` of the training loop.
        All other arguments are DataLoader's; ``sampler`` must be a :class:`ResumableSampler`.
    """

    def __init__(self, *args: Any, position_fn: Callable[[], tuple[int, int]] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self.position_fn = position_fn

    def state_dict(self) -> dict[str, int]:
        assert isinstance(self.sampler, ResumableSampler)
        epoch, batches_done = self.position_fn() if self.position_fn else (self.sampler.epoch, 0)
        assert self.batch_size is not None
        return {
            "epoch": int(epoch),
            "samples_done": int(batches_done) * int(self.batch_size),
            "seed": int(self.sampler.seed),
            "num_replicas": int(self.sampler.num_replicas),
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        assert isinstance(self.sampler, ResumableSampler)
        same_layout = state_dict.get("num_replicas") == self.sampler.num_replicas
        same_seed = state_dict.get("seed") == self.sampler.seed
        # Another world size or seed shards / orders the data differently: the saved position means
        # nothing there, so start the epoch from its beginning (what plain Lightning does).
        samples_done = int(state_dict.get("samples_done", 0)) if same_layout and same_seed else 0
        self.sampler.resume_at(int(state_dict.get("epoch", 0)), samples_done)
