"""The linear grid: every (lr, blocks, pool) head trains on frozen features; the held-out split picks."""

from __future__ import annotations

import pytest
import torch

from sslvit.eval.features import feature_slices
from sslvit.eval.linear import format_grid, train_linear_grid

D = 8  # token width; rows are [CLS block -2 | CLS block -1 | mean patch of block -1] = 3 * D columns


def toy_features(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes told apart only along one direction of the pooled-patch columns."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    rows = torch.randn(n, 3 * D, generator=g)
    direction = torch.zeros(D)
    direction[3] = 1.0
    rows[:, 2 * D :] += 4.0 * (labels.float() - 1.0)[:, None] * direction  # centres -4, 0, +4
    return rows, labels


def test_feature_slices_pick_the_documented_columns():
    # 4 stored blocks of width 2: CLS columns 0..7, pooled patches 8..9.
    assert feature_slices(2, 4, 1, avgpool=False) == [slice(6, 8)]
    assert feature_slices(2, 4, 4, avgpool=True) == [slice(0, 8), slice(8, 10)]
    with pytest.raises(ValueError, match="blocks"):
        feature_slices(2, 4, 5, avgpool=False)


def test_grid_finds_the_separable_direction_and_picks_it():
    train_x, train_y = toy_features(900, seed=0)
    test_x, test_y = toy_features(300, seed=1)
    lrs = [1e-4, 1e-2, 1.0]
    result = train_linear_grid(
        train_x, train_y, test_x, test_y, num_classes=3, embed_dim=D, stored_blocks=2, lrs=lrs,
        blocks=[1, 4], pools=["cls", "cls_avgpool"], epochs=8, batch_size=64, val_fraction=0.2,
    )  # fmt: skip
    grid = result["grid"]
    # blocks=4 is clipped to the 2 stored blocks: 2 block counts x 2 pools x 3 lrs.
    assert len(grid) == 12 and {row["blocks"] for row in grid} == {1, 2}
    assert result["num_heldout"] == 180 and result["num_fit"] == 720
    best = result["best"]
    assert best["val_top1"] == max(row["val_top1"] for row in grid)
    assert best["pool"] == "cls_avgpool"
    assert best["test_top1"] > 95.0
    # Without the pooled patches the features carry no label information: chance is 33%.
    assert max(row["test_top1"] for row in grid if row["pool"] == "cls") < 50.0
    # A too small lr barely moves a head from its random init, so it is not picked.
    assert best["lr"] != 1e-4
    assert format_grid(result).count(" *") == 1


def test_grid_rejects_a_bad_held_out_fraction():
    x, y = toy_features(20, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        train_linear_grid(x, y, x, y, 3, D, 2, lrs=[0.1], val_fraction=0.0)


def test_bank_update_is_torch_sgd_with_one_lr_per_head():
    from sslvit.eval.linear import _Bank, _bank_logits, _sgd_step

    torch.manual_seed(0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    lrs = [0.5, 0.01]
    weight, bias = torch.randn(2, 5, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    heads = [torch.nn.Linear(5, 3) for _ in lrs]
    with torch.no_grad():
        for i, head in enumerate(heads):
            head.weight.copy_(weight[i].T)
            head.bias.copy_(bias[i])
    optimizer = torch.optim.SGD(
        [{"params": h.parameters(), "lr": lr} for h, lr in zip(heads, lrs)], momentum=0.9, weight_decay=1e-3
    )
    bank = _Bank(blocks=1, pool="cls", cols=[slice(0, 5)], params=[weight, bias])
    for _ in range(3):
        logits = _bank_logits(weight, bias, x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(2), reduction="sum") / 16
        _sgd_step(bank, torch.autograd.grad(loss, [weight, bias]), torch.tensor(lrs), 0.9, 1e-3)
        optimizer.zero_grad()
        sum(torch.nn.functional.cross_entropy(h(x), y) for h in heads).backward()
        optimizer.step()
    for i, head in enumerate(heads):
        torch.testing.assert_close(weight[i].detach().T, head.weight.detach())
        torch.testing.assert_close(bias[i].detach(), head.bias.detach())
