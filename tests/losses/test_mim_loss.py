"""BEiT's MIM cross-entropy: masked positions only, hand-computed value."""

import math

import pytest
import torch

from sslvit.losses import MIMCrossEntropy


def test_unmasked_positions_do_not_matter_and_value_by_hand():
    loss_fn = MIMCrossEntropy()
    logits = torch.zeros(2, 3, 4)
    logits[0, 1] = torch.tensor([2.0, 0.0, 0.0, 0.0])  # masked, target 0
    targets = torch.tensor([[3, 0, 1], [2, 2, 2]])
    masks = torch.tensor([[False, True, False], [False, False, True]])
    # position (0,1): -log(e^2 / (e^2 + 3)); position (1,2): uniform logits -> log 4
    expected = (-math.log(math.e**2 / (math.e**2 + 3)) + math.log(4)) / 2
    assert float(loss_fn(logits, targets, masks)) == pytest.approx(expected, rel=1e-6)

    changed_logits, changed_targets = logits.clone(), targets.clone()
    changed_logits[~masks] = torch.randn(int((~masks).sum()), 4) * 10
    changed_targets[~masks] = 1
    assert float(loss_fn(changed_logits, changed_targets, masks)) == pytest.approx(expected, rel=1e-6)
    # the gathered form (classifier run on masked tokens only) is the same loss
    assert float(loss_fn(logits[masks], targets[masks])) == pytest.approx(expected, rel=1e-6)


def test_gradient_only_at_masked_positions_and_empty_masks():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    masks = torch.zeros(2, 5, dtype=torch.bool)
    masks[1, 3] = True
    MIMCrossEntropy()(logits, torch.randint(0, 7, (2, 5)), masks).backward()
    assert logits.grad[masks].abs().sum() > 0 and logits.grad[~masks].abs().sum() == 0
    empty = MIMCrossEntropy()(logits, torch.zeros(2, 5, dtype=torch.int64), torch.zeros_like(masks))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    assert float(MIMCrossEntropy.accuracy(torch.eye(3), torch.tensor([0, 1, 0]))) == pytest.approx(200 / 3)
