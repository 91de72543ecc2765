"""Fine-tuning with layer-wise lr decay: the lr scale per depth, and a toy task it must learn."""

from __future__ import annotations

import pytest
import torch

from sslvit.backbones import MaskedViT
from sslvit.eval.finetune import finetune


def colour_batches(n_batches: int, batch: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noise images whose label is the colour channel that is brighter (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        labels = torch.randint(0, 3, (batch,), generator=g)
        images = torch.randn(batch, 3, 16, 16, generator=g)
        images[torch.arange(batch), labels] += 0.5
        out.append((images, labels))
    return out


def test_finetune_learns_a_toy_task_with_layer_decayed_lrs():
    torch.manual_seed(0)
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    result = finetune(
        backbone, colour_batches(12, 16, seed=0), colour_batches(4, 16, seed=1), num_classes=3,
        epochs=3, lr=5e-3, warmup_epochs=0.5, layer_decay=0.5, weight_decay=0.05,
    )  # fmt: skip
    # Depth 2: embeddings at 0.5**3, block 0 at 0.5**2, block 1 at 0.5, the head at the full lr.
    assert result["lr_scale_by_layer"] == {"embeddings": 0.125, "block0": 0.25, "block1": 0.5, "head": 1.0}
    assert result["steps"] == 36
    assert result["train_loss_last_epoch"] < 0.5 * result["train_loss_first_epoch"]
    assert result["test_top1"] >= 90.0
    assert result["test_top1"] > result["test_top1_before"]


def test_finetune_rejects_zero_epochs():
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="epochs"):
        finetune(backbone, [], [], num_classes=2, epochs=0)


def test_a_non_finite_loss_stops_fine_tuning_naming_its_first_step():
    torch.manual_seed(0)
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    train = colour_batches(4, 8, seed=0)
    train[2][0][0, 0, 0, 0] = float("nan")  # the third batch's loss is NaN
    with pytest.raises(FloatingPointError, match=r"not finite from step 2 on; lower eval\.lr"):
        finetune(backbone, train, colour_batches(1, 8, seed=1), num_classes=3, epochs=1, lr=1e-3)
