"""benchmarks.sinkhorn times the teacher's targets (a smoke test: no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import sinkhorn


def test_sinkhorn_benchmark_reports_a_time() -> None:
    result = sinkhorn.main(["--rows", "16", "--prototypes", "64", "--repeats", "2", "--device", "cpu"])
    assert result["ms"] > 0 and (result["rows"], result["prototypes"]) == (16, 64)
