"""``pin_memory`` of every batch type copies all of its tensors (pinning itself needs a GPU driver)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from sslvit.data.batch import CropSourceBatch, MaskedImageBatch, MultiCropBatch


@pytest.fixture
def fake_pinning(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """``Tensor.pin_memory`` replaced by a recorded clone: the CPU-only stand-in for page-locking."""
    pinned: list[torch.Tensor] = []

    def pin(self: torch.Tensor) -> torch.Tensor:
        copy = self.clone()
        pinned.append(copy)
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    return pinned


def batches() -> list[object]:
    masks = torch.tensor([[True, False], [False, True]])
    crops = [torch.zeros(2, 3, 4, 4)]
    return [
        MultiCropBatch(
            global_crops=crops, local_crops=crops, labels=torch.zeros(2), masks=masks, num_skipped=1
        ),
        MaskedImageBatch(images=crops[0], labels=torch.zeros(2), tokenizer_images=crops[0], masks=masks),
        CropSourceBatch(
            images=torch.zeros(2, 3, 8, 8, dtype=torch.uint8),
            global_boxes=torch.zeros(2, 2, 4),
            local_boxes=torch.zeros(3, 2, 4),
            global_flips=torch.zeros(2, 2, dtype=torch.bool),
            local_flips=torch.zeros(3, 2, dtype=torch.bool),
            global_size=4,
            local_size=2,
            labels=torch.zeros(2),
            masks=masks,
        ),
    ]


@pytest.mark.parametrize("batch", batches(), ids=lambda b: type(b).__name__)
def test_pin_memory_copies_every_tensor_and_keeps_the_rest(batch, fake_pinning) -> None:
    pinned = batch.pin_memory()
    assert type(pinned) is type(batch)
    ids = {id(t) for t in fake_pinning}
    for field in dataclasses.fields(batch):
        before, after = getattr(batch, field.name), getattr(pinned, field.name)
        if isinstance(before, torch.Tensor):
            assert id(after) in ids and torch.equal(after, before), field.name
        elif isinstance(before, list):
            assert all(id(a) in ids and torch.equal(a, b) for a, b in zip(after, before, strict=True))
        else:
            assert after == before, field.name
    assert pinned.mask_indices.tolist() == [0, 3]
