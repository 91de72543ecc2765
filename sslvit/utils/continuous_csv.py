"""A CSV logger that keeps one metrics file per run folder, continued (not restarted) by a resumed run."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from sslvit.utils.atomic_write import atomic_write_text


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued rather than deleted.

    The rows an interrupted run logged after its last checkpoint are logged again by the resumed run:
    at the first metrics it logs (step ``s``), the rows of step ``s`` and later are dropped from the
    file, so every step appears once and in order.
    """

    def __init__(self, log_dir: str) -> None:
        # Not Lightning's __init__: it deletes a metrics file it finds there.
        self.metrics: list[dict[str, float]] = []
        self.metrics_keys: list[str] = []
        self.hparams: dict[str, Any] = {}
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        os.makedirs(log_dir, exist_ok=True)
        self._fs = get_filesystem(log_dir)
        self._continued = False

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._continued:
            self._continued = True
            self._drop_rows_from(step if step is not None else 0)
        super().log_metrics(metrics_dict, step)

    def _drop_rows_from(self, step: int) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if _step_of(row) < step]
        self.metrics_keys = header  # later rows with new keys rewrite the file with a wider header
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(text.getvalue(), self.metrics_file_path)


def _step_of(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("inf")  # unreadable: drop it with the rows being replaced


class ContinuousCSVLogger(CSVLogger):
    """``<save_dir>/<name>/metrics.csv`` (and ``hparams.yaml``): one file for the whole run folder.

    Lightning's CSVLogger starts a new ``version_N`` folder on every start, so a resumed run split its
    metrics over two files, with the steps between the last checkpoint and the interruption in both.
    This one writes into ``<save_dir>/<name>/`` directly and a resumed run continues the file
    (:class:`_ContinuingWriter`).

    Args:
        save_dir: the run folder.
        name: sub-folder of the metrics (``csv``).
        flush_logs_every_n_steps: how often rows are written to disk.
    """

    def __init__(self, save_dir: str, name: str = "csv", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name=name, version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def log_dir(self) -> str:
        return self.root_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, ExperimentWriter):
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment
