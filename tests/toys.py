"""Shared test helpers: tiny DINO modules and in-memory multi-crop loaders for method tests."""

import torch

from sslvit.backbones import MaskedViT
from sslvit.data.batch import MultiCropBatch
from sslvit.methods import DINO, OptimConfig


def tiny_backbone() -> MaskedViT:
    return MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def tiny_dino(**optim_overrides) -> DINO:
    optim = OptimConfig(**{"warmup_epochs": 0, "batch_size_per_device": 4, **optim_overrides})
    return DINO(
        tiny_backbone(), optim, out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_teacher_temp_epochs=1
    )


def multicrop_batches(num_batches: int, batch_size: int = 4, seed: int = 0) -> list[MultiCropBatch]:
    g = torch.Generator().manual_seed(seed)
    return [
        MultiCropBatch(
            global_crops=[torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(2)],
            local_crops=[torch.randn(batch_size, 3, 8, 8, generator=g) for _ in range(2)],
            labels=torch.randint(0, 3, (batch_size,), generator=g),
        )
        for _ in range(num_batches)
    ]


def loader(batches: list[MultiCropBatch]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
