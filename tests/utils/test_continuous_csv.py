import csv

from sslvit.utils.continuous_csv import ContinuousCSVLogger


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def _log(logger, steps, **extra):
    for step in steps:
        logger.log_metrics({"train/loss": 10.0 - step, **extra}, step=step)
    logger.save()


def test_one_file_per_run_folder(tmp_path):
    logger = ContinuousCSVLogger(str(tmp_path), name="csv")
    logger.log_hyperparams({"lr": 0.1})
    _log(logger, range(3))
    assert logger.log_dir == str(tmp_path / "csv")
    assert [r["step"] for r in _rows(tmp_path / "csv" / "metrics.csv")] == ["0", "1", "2"]
    assert (tmp_path / "csv" / "hparams.yaml").is_file()
    assert not list((tmp_path / "csv").glob("version_*"))


def test_a_resumed_run_continues_the_file_without_duplicated_steps(tmp_path):
    first = ContinuousCSVLogger(str(tmp_path))
    _log(first, range(6))  # checkpoint at step 4, interrupted after logging step 5
    resumed = ContinuousCSVLogger(str(tmp_path))
    _log(resumed, range(4, 8), **{"val/knn_top1": 50.0})  # a new column too
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert [r["val/knn_top1"] for r in rows] == [""] * 4 + ["50.0"] * 4
    assert float(rows[5]["train/loss"]) == 5.0


def test_a_fresh_run_in_a_used_folder_replaces_the_rows(tmp_path):
    _log(ContinuousCSVLogger(str(tmp_path)), range(5))
    _log(ContinuousCSVLogger(str(tmp_path)), range(2))
    assert [r["step"] for r in _rows(tmp_path / "csv" / "metrics.csv")] == ["0", "1"]
