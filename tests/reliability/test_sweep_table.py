"""sslvit.sweep_table: one row per job of a multirun, varying overrides, best first."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from sslvit.sweep_table import SweepTableWriter, collect, main


def _job(sweep: Path, num: int, overrides: list[str], knn: float | None, status: str = "completed") -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if knn is not None:
        summary = {
            "status": status,
            "metrics": {"val/knn_top1": knn, "train/loss": 2.0 + num},
            "wall_time_s": 1.5,
        }
        (job / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path) -> Path:
    common = ["backbone=vit_test", "data=fake"]
    _job(tmp_path, 0, [*common, "method.optim.base_lr=0.002", "method.teacher_temp=0.04"], 40.0)
    _job(tmp_path, 1, [*common, "method.optim.base_lr=0.004", "method.teacher_temp=0.04"], 55.5)
    _job(tmp_path, 2, [*common, "method.optim.base_lr=0.002", "method.teacher_temp=0.07"], None)
    _job(tmp_path, 10, [*common, "method.optim.base_lr=0.004", "method.teacher_temp=0.07"], 50.0, "preempted")
    return tmp_path


def test_collect_reads_every_job_in_numeric_order(sweep):
    rows = collect(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # 10 after 2, not after 1
    assert rows[2]["status"] == "no summary" and "val/knn_top1" not in rows[2]
    assert rows[3]["status"] == "preempted" and rows[1]["method.optim.base_lr"] == "0.004"


def test_cli_writes_csv_and_markdown_best_first(sweep, capsys):
    main([str(sweep)])
    with (sweep / "sweep_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["1", "10", "0", "2"]  # by val/knn_top1, missing last
    assert rows[0]["val/knn_top1"] == "55.5" and rows[0]["backbone"] == "vit_test"
    markdown = (sweep / "sweep_results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| job"))
    # only the swept keys get columns; the shared ones are listed once
    columns = (
        "job | method.optim.base_lr | method.teacher_temp | status | val/knn_top1 | train/loss | wall_time_s"
    )
    assert header == f"| {columns} |"
    assert "Common overrides: `backbone=vit_test data=fake`" in markdown
    assert "| 1 | 0.004 | 0.04 | completed | 55.5 | 3 | 1.5 |" in markdown
    assert "4 jobs" in capsys.readouterr().out


def test_hydra_callback_writes_the_table_at_multirun_end(sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "optimized_metric": "train/loss"})
    SweepTableWriter().on_multirun_end(config)
    with (sweep / "sweep_results.csv").open() as f:
        jobs = [r["job"] for r in csv.DictReader(f)]
    assert jobs == ["0", "1", "10", "2"]  # by the optimized metric; a loss ranks smallest first


def _job_end(sweep: Path, job: str, status, error: Exception | None = None) -> None:
    from hydra.core.utils import JobReturn
    from hydra.types import RunMode

    config = OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "sweep": {"dir": str(sweep)},
                "runtime": {"output_dir": str(sweep / job)},
            },
            "optimized_metric": "val/knn_top1",
        }
    )
    job_return = JobReturn(status=status)
    job_return.return_value = error
    SweepTableWriter().on_job_end(config, job_return)


def test_table_is_written_after_each_job_with_failed_ones_as_rows(sweep):
    # Hydra never calls on_multirun_end once a job has raised: the table is updated after every job.
    from hydra.core.utils import JobStatus

    _job(sweep, 3, ["backbone=vit_test", "data=fake", "method.student_temp=0"], None)
    _job_end(sweep, "3", JobStatus.FAILED, ValueError("method.student_temp must be > 0, got 0\nmore"))
    with (sweep / "sweep_results.csv").open() as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert rows["3"]["status"] == "failed"
    assert rows["3"]["error"] == "ValueError: method.student_temp must be > 0, got 0"
    assert rows["2"]["status"] == "no summary" and rows["1"]["status"] == "completed"
    assert "| failed |" in (sweep / "sweep_results.md").read_text()
    _job_end(sweep, "1", JobStatus.COMPLETED)  # a finished job's own summary is left alone
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"


def test_single_runs_write_no_table(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode

    config = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path)}}})
    SweepTableWriter().on_job_end(config, JobReturn(status=JobStatus.FAILED))
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"sweep folder .*nowhere does not exist"):
        collect(tmp_path / "nowhere")


def _compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir
    from toys import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize(("sweep", "axes"), [("dino_grid", 2), ("methods", 2)])
def test_named_grid_sweeps_compose(sweep, axes):
    cfg = _compose_hydra(f"sweep={sweep}")
    params = cfg.hydra.sweeper.params
    assert len(params) == axes and all("," in str(v) for v in params.values())
    assert cfg.hydra.callbacks.sweep_table._target_ == "sslvit.sweep_table.SweepTableWriter"


def test_slurm_launcher_config_extends_submitit():
    pytest.importorskip(
        "hydra_plugins.hydra_submitit_launcher", reason="optional extra: pip install -e '.[slurm]'"
    )
    launcher = _compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.partition) == (8, 8, "gpu")


def test_optuna_sweep_config_uses_the_optuna_sweeper():
    pytest.importorskip(
        "hydra_plugins.hydra_optuna_sweeper", reason="optional extra: pip install -e '.[optuna]'"
    )
    cfg = _compose_hydra("sweep=optuna_dino")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.optimized_metric == "val/knn_top1"
