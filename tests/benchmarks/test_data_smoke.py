"""The data-pipeline benchmark runs on a few synthetic JPEGs (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import data as data_bench

SMALL = ["--synthetic", "8", "--workers", "0", "--batches", "1", "--batch", "4", "--patch", "8",
         "--global-size", "32", "--local-size", "16", "--num-local", "2"]  # fmt: skip


@pytest.mark.parametrize("on_device", [None, "--photometric-on-device", "--crops-on-device"])
def test_data_benchmark_reports_rows_and_the_device_stage(tmp_path, on_device):
    out = tmp_path / "data.json"
    argv = [*SMALL, "--json", str(out)] + ([on_device] if on_device else [])
    report = data_bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert row["workers"] == 0 and row["images"] == 4 and row["img_per_s"] > 0
    assert report["crops_on_device"] == (on_device == "--crops-on-device")
    if on_device:
        assert report["device_stage"]["ms_per_batch"] > 0 and report["device_stage"]["device"] == "cpu"
    else:
        assert report["device_stage"] is None
