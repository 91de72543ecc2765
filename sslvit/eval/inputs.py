"""What every offline evaluation receives: ``python eval.py eval=<name>`` calls the function that
``conf/eval/<name>.yaml`` names in ``_target_`` with an :class:`EvalInputs` and that file's values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn


@dataclass(frozen=True)
class EvalInputs:
    """The checkpoint's backbone and where and how to evaluate it.

    Attributes:
        backbone: the evaluation backbone (eval mode, on the CPU; the evaluation moves it to ``device``).
        device: ``cpu`` or ``cuda`` for the evaluation's own computations.
        seed: seed of the run (the linear grid's held-out split).
        output_dir: the run folder, for the evaluation's own files next to ``eval_summary.json``.
        datamodule: builds the labelled datamodule (raises with the fix when there is no data config).
        has_data_config: whether :attr:`datamodule` can build one (an evaluation without data may skip it).
    """

    backbone: nn.Module
    device: str
    seed: int
    output_dir: Path
    datamodule: Callable[[], Any]
    has_data_config: bool
