"""The command lines of README / the issue, run as a user would (subprocesses: ~10 s each)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_dinov2_on_eight_devices_composes():
    proc = run("train.py", "method=dinov2", "trainer.devices=8", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "_target_: sslvit.methods.DINOv2" in proc.stdout
    assert "devices: 8" in proc.stdout


def test_multirun_sweep_writes_one_summary_per_job(tmp_path):
    proc = run(
        "train.py",
        "-m",
        "backbone=vit_test",
        "data=fake",
        "backbone.patch_size=8",
        "trainer.fast_dev_run=true",
        "logger=csv",
        "method=dino",
        "method.out_dim=64,128",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    for path in summaries:
        summary = json.loads(path.read_text())
        assert "val/knn_top1" in summary["metrics"]
        assert summary["output_dir"] == str(path.parent)
        assert f"output dir: {path.parent}" in proc.stdout
    # the Hydra callback collated the sweep: one row per job, the swept key as a column
    table = (tmp_path / "sweep_results.md").read_text()
    assert "| job | method.out_dim | status | val/knn_top1 |" in table
    assert {line.split(" | ")[1] for line in table.splitlines() if line.startswith(("| 0 ", "| 1 "))} == {
        "64",
        "128",
    }
    assert len((tmp_path / "sweep_results.csv").read_text().splitlines()) == 3  # header + 2 jobs


def test_multirun_with_failed_jobs_still_writes_the_table(tmp_path):
    # Hydra skips on_multirun_end when a job raises; the table is written after each job instead.
    proc = run(
        "train.py", "-m", "backbone=vit_test", "method.student_temp=0,-1", f"hydra.sweep.dir={tmp_path}"
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr  # the configuration error is reported as its one line
    with (tmp_path / "sweep_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["failed", "failed"]  # both jobs ran, both are rows
    assert rows[1]["error"] == "ConfigError: method.student_temp must be > 0, got -1"


def test_missing_data_folder_fails_at_start_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    proc = run(
        "train.py",
        "data=folder",
        f"data.root={missing}",
        "backbone=vit_test",
        "trainer=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode != 0
    assert str(missing) in proc.stderr
    assert "Training" not in proc.stdout  # stopped before the first step


def test_config_mistake_is_one_line_without_traceback(tmp_path):
    proc = run("train.py", "method.student_temp=0", "backbone=vit_test", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: method.student_temp must be > 0, got 0"]


@pytest.mark.ddp
def test_simulated_ddp_run_end_to_end(tmp_path):
    """trainer=ddp_sim: 2 CPU processes (gloo) through the real train.py, k-NN gathered across ranks."""
    proc = run(
        "train.py",
        "trainer=ddp_sim",
        "backbone=vit_test",
        "data=fake",
        "backbone.patch_size=8",
        "trainer.fast_dev_run=true",
        "method.out_dim=64",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "val/knn_top1" in summary["metrics"] and "train/dino_loss" in summary["metrics"]
