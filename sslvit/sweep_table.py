"""Collate the runs of a Hydra multirun into one table: ``python -m sslvit.sweep_table <sweep dir>``.

Every job of a sweep writes ``<sweep dir>/<job>/summary.json`` (metrics, status, wall time) next to
``.hydra/overrides.yaml`` (its command-line overrides). This module reads them and writes
``sweep_results.csv`` (every metric) and ``sweep_results.md`` (the overrides that vary across jobs,
the headline metrics, best first) into the sweep folder. :class:`SweepTableWriter` does the same
automatically during every ``python train.py -m ...`` (registered in conf/config.yaml): after each job,
failed ones included, because Hydra skips the end-of-multirun hook as soon as one job has failed.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sslvit.utils.atomic_write import atomic_write_json, atomic_write_text

CSV_NAME, MARKDOWN_NAME = "sweep_results.csv", "sweep_results.md"
# Columns of the markdown table besides the varying overrides (the CSV has every metric).
HEADLINE = ("val/knn_top1", "val/linear_top1", "train/loss")


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    jobs |= {p.parent for p in sweep_dir.glob("**/summary.json")}

    def key(path: Path) -> tuple:
        rel = path.relative_to(sweep_dir).parts
        return tuple((0, int(part)) if part.isdigit() else (1, part) for part in rel)

    return sorted(jobs, key=key)


def _overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    out = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job: ``job``, its overrides, ``status``, ``wall_time_s`` and every scalar metric.

    A job without summary.json (still running, killed) gets ``status`` ``no summary``; a job that raised
    an exception has ``status`` ``failed`` and the exception in ``error`` (:class:`SweepTableWriter`).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep folder {sweep_dir} does not exist")
    rows = []
    for job_dir in _job_dirs(sweep_dir):
        row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir)), **_overrides(job_dir)}
        summary_path = job_dir / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            row["status"] = summary.get("status", "completed")
            if summary.get("error"):
                row["error"] = summary["error"]
            row["wall_time_s"] = summary.get("wall_time_s")
            row.update(summary.get("metrics", {}))
        else:
            row["status"] = "no summary"
        rows.append(row)
    if not rows:
        raise ValueError(f"no jobs (summary.json or .hydra/overrides.yaml) under {sweep_dir}")
    return rows


def _sort_value(row: dict[str, Any], metric: str, maximize: bool) -> float:
    value = row.get(metric)
    if not isinstance(value, int | float) or math.isnan(value):
        return math.inf  # jobs without the metric go last
    return -value if maximize else value


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")  # a table cell


def write_sweep_table(
    sweep_dir: str | Path, sort_by: str | None = "val/knn_top1", maximize: bool = True
) -> list[dict[str, Any]]:
    """Write ``sweep_results.csv`` and ``sweep_results.md`` into ``sweep_dir``; return the rows (sorted).

    Args:
        sweep_dir: the multirun folder (``hydra.sweep.dir``).
        sort_by: metric to rank jobs by (best first); None keeps job order.
        maximize: whether larger ``sort_by`` values are better.
    """
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    if sort_by:
        rows.sort(key=lambda row: _sort_value(row, sort_by, maximize))
    override_keys = list(dict.fromkeys(k for row in rows for k in _overrides(sweep_dir / row["job"])))
    fixed_columns = {"job", "status", "error", "wall_time_s", *override_keys}
    metric_keys = sorted({k for row in rows for k in row} - fixed_columns)
    errors = ["error"] if any("error" in row for row in rows) else []
    columns = ["job", *override_keys, "status", *metric_keys, "wall_time_s", *errors]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    # Jobs of a parallel launcher (SLURM) may finish together: each writes a whole table atomically.
    atomic_write_text(text.getvalue(), sweep_dir / CSV_NAME)

    varying = [k for k in override_keys if len({row.get(k) for row in rows}) > 1]
    fixed = [f"{k}={rows[0].get(k)}" for k in override_keys if k not in varying]
    headline = [k for k in HEADLINE if k in metric_keys]
    if sort_by and sort_by in metric_keys and sort_by not in headline:
        headline.insert(0, sort_by)
    md_columns = ["job", *varying, "status", *headline, "wall_time_s", *errors]
    lines = [f"# Sweep {sweep_dir}", ""]
    if fixed:
        lines += ["Common overrides: `" + " ".join(fixed) + "`", ""]
    if sort_by:
        lines += [f"Sorted by `{sort_by}` ({'largest' if maximize else 'smallest'} first).", ""]
    lines.append("| " + " | ".join(md_columns) + " |")
    lines.append("|" + "---|" * len(md_columns))
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in md_columns) + " |" for row in rows]
    atomic_write_text("\n".join(lines) + "\n", sweep_dir / MARKDOWN_NAME)
    return rows


class SweepTableWriter(Callback):
    """Hydra callback: (re)write the sweep table after every job of a multirun and at its end.

    Hydra does not call ``on_multirun_end`` once a job has raised, so the table is written after each
    job too (``on_job_end`` runs for failed jobs). A failed job that wrote no summary gets one with
    ``status: failed`` and the exception's first line, so it shows as a row rather than a gap.
    """

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        if job_return.status == JobStatus.FAILED:
            job_dir = Path(config.hydra.runtime.output_dir)
            summary_path = job_dir / "summary.json"
            if job_dir.is_dir() and not summary_path.exists():
                error = job_return._return_value  # the public getter re-raises it
                first_line = (str(error).strip().splitlines() or [""])[0]
                record = {"status": "failed", "error": f"{type(error).__name__}: {first_line}", "metrics": {}}
                atomic_write_json(record, summary_path)
        self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._write(config):
            print(f"sweep table: {Path(config.hydra.sweep.dir) / MARKDOWN_NAME}")

    def _write(self, config: DictConfig) -> bool:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return False
        metric = config.get("optimized_metric")
        # Optuna's sweeper states the direction; otherwise losses go down and accuracies go up.
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        maximize = direction == "maximize" if isinstance(direction, str) else "loss" not in str(metric)
        try:
            write_sweep_table(sweep_dir, sort_by=metric, maximize=maximize)
        except ValueError:
            return False  # no job wrote anything (e.g. all failed at composition)
        return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="multirun folder, e.g. multirun/2026-11-29/10-00-00")
    parser.add_argument("--sort", default="val/knn_top1", help="metric to rank by ('' = job order)")
    parser.add_argument("--minimize", action="store_true", help="smaller --sort values are better")
    args = parser.parse_args(argv)
    rows = write_sweep_table(args.sweep_dir, sort_by=args.sort or None, maximize=not args.minimize)
    print((Path(args.sweep_dir) / MARKDOWN_NAME).read_text(), end="")
    print(f"{len(rows)} jobs -> {Path(args.sweep_dir) / CSV_NAME}")


if __name__ == "__main__":
    main()
