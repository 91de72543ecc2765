"""Codebook usage and perplexity of a histogram of code ids, by hand."""

import math

import pytest
import torch

from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.utils.id_counts import id_counts


def test_usage_and_perplexity_hand_values() -> None:
    used, perplexity = usage_and_perplexity(id_counts(torch.tensor([[0, 0], [1, 1]]), 4))
    assert float(used) == pytest.approx(0.5) and float(perplexity) == pytest.approx(2.0)
    used, perplexity = usage_and_perplexity(id_counts(torch.zeros(5, dtype=torch.int64), 8))
    assert float(used) == pytest.approx(1 / 8) and float(perplexity) == pytest.approx(1.0)  # collapse
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    used, perplexity = usage_and_perplexity(torch.tensor([3.0, 1.0]))
    assert float(used) == pytest.approx(1.0) and float(perplexity) == pytest.approx(math.exp(entropy))


def test_nothing_counted_is_zero_usage_and_zero_perplexity() -> None:
    used, perplexity = usage_and_perplexity(torch.zeros(3))
    assert float(used) == 0.0 and float(perplexity) == 0.0


def test_statistics_keep_a_float_histogram_dtype() -> None:
    assert usage_and_perplexity(torch.tensor([2.0, 2.0])).perplexity.dtype == torch.float32
    assert usage_and_perplexity(torch.tensor([2, 2])).perplexity.dtype == torch.float64
