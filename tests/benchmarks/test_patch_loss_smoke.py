"""benchmarks.patch_loss times the teacher's targets and the loss (a smoke test: no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import patch_loss


def test_patch_loss_benchmark_reports_both_times() -> None:
    result = patch_loss.main(["--rows", "16", "--prototypes", "64", "--repeats", "2", "--device", "cpu"])
    assert result["sinkhorn_ms"] > 0 and result["soft_cross_entropy_ms"] > 0
    assert (result["rows"], result["prototypes"]) == (16, 64)
