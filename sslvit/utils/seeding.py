"""Seeds derived from counters, so that randomness is a pure function of (seed, epoch, step, sample).

A run that restarts from a checkpoint then draws exactly the random numbers the uninterrupted run drew,
without having to store and restore generator states (which depend on how far DataLoader prefetching
had run, and differ per rank).
"""

from __future__ import annotations

import random

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    # SplitMix64 finaliser (Steele et al., 2014): consecutive inputs give unrelated outputs.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """One 63-bit seed from a tuple of integers; different tuples give unrelated seeds."""
    state = 0
    for value in values:
        state = _splitmix64(state ^ (int(value) & _MASK64))
    return state >> 1


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
