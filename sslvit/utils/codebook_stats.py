"""How much of a codebook (tokenizer vocabulary, prototypes) a histogram of code ids uses."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class CodebookStats(NamedTuple):
    """Use of a codebook of K entries, as 0-dim tensors on the histogram's device.

    Attributes:
        used_fraction: share of the K entries that occur at least once (BEiT v2's "codebook usage").
        perplexity: ``exp(H(p))`` of the code frequencies ``p``, the effective number of entries in use:
            K when all are used equally, 1 when a single one takes every position (collapse), 0 when
            nothing was counted.
    """

    used_fraction: Tensor
    perplexity: Tensor


def usage_and_perplexity(counts: Tensor) -> CodebookStats:
    """Codebook statistics of ``counts (K,)``, the occurrences of each entry (e.g. from
    :func:`sslvit.utils.id_counts.id_counts`), summed over processes where that matters.

    Computed on the device in the counts' dtype (float64 for integer counts), so a training step that
    logs them does not wait for the device.
    """
    counts = counts if counts.is_floating_point() else counts.double()
    total = counts.sum()
    probs = counts / total.clamp_min(1.0)
    # 0 * log(0) = 0: the clamp only keeps unused entries from producing NaN.
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return CodebookStats((counts > 0).to(counts.dtype).mean(), entropy.exp() * (total > 0))
