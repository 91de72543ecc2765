"""Dataset wrappers that apply a transform and let unreadable (None) samples through to the collate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image


class ImageDataset(Protocol):
    """What the wrappers need: ``len`` and ``dataset[i] -> (PIL image, label) | None``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None: ...


@runtime_checkable
class ReducedDecoding(Protocol):
    """A dataset that can decode its images at a reduced scale (for a transform that shrinks them)."""

    def with_decode_max_side(self, max_side: int) -> ImageDataset:
        """The same samples, decoded down to (not below) ``max_side`` on the long side where cheaper."""
        ...


class TransformedDataset(torch.utils.data.Dataset):
    """``dataset[i] -> (transform(image), label)``, or None when the underlying sample is unreadable."""

    def __init__(self, dataset: ImageDataset, transform: Callable[[Image.Image], Any]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        sample = self.dataset[index]
        if sample is None:
            return None
        image, label = sample
        return self.transform(image), label


class IndexedEvalDataset(torch.utils.data.Dataset):
    """A (sub)set for evaluation: ``[i] -> (transform(image), label, original index)`` or None.

    Args:
        dataset: the labelled dataset.
        transform: the deterministic evaluation transform.
        indices: which samples of ``dataset`` to serve, in this order (None = all).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        transform: Callable[[Image.Image], torch.Tensor],
        indices: Sequence[int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int] | None:
        index = self.indices[position]
        sample = self.dataset[index]
        if sample is None:
            return None
        image, label = sample
        return self.transform(image), label, index
