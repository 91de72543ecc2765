"""The visualisation callback writes its pictures in a real fast_dev_run; image loggers get them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from toys import TINY, compose_train_cfg

from sslvit.callbacks import HealthMonitor, Visualizer
from sslvit.callbacks.visualization import log_image
from sslvit.train import train


def test_fast_dev_run_with_csv_logger_writes_pngs(tmp_path):
    overrides = [
        *TINY,
        "trainer.fast_dev_run=true",
        "callbacks=[default,visualization]",
        "data/masking=block",  # DINO ignores masks; the crops picture shades them
        "backbone.num_register_tokens=2",
    ]
    cfg = compose_train_cfg(tmp_path, overrides)
    assert {"knn", "linear_probe", "health", "visualization"} <= set(cfg.callbacks)
    summary = train(cfg)
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert [n.split("_epoch")[0] for n in names] == ["viz_attention", "viz_crops", "viz_pca"]
    sizes = {n.split("_epoch")[0]: Image.open(tmp_path / "images" / n).size for n in names}
    # fake data: 32-px images, 4 eval images, 2 heads -> 3 columns of 34 px + 2 = 104 px by 4 rows = 138 px,
    # enlarged 3x (the smallest integer factor that reaches min_side 256)
    assert sizes["viz_attention"] == (3 * 104, 3 * 138)
    assert sizes["viz_pca"] == (3 * 104, 3 * 138)  # image, first component, PCA colours
    assert min(sizes["viz_crops"]) >= 256
    crops = torch.from_numpy(np.array(Image.open(tmp_path / "images" / names[1])))
    reddish = (crops[..., 0].int() - crops[..., 1].int() > 120).sum()
    assert int(reddish) > 0  # some masked patches were shaded
    assert "health/teacher_entropy" in summary["metrics"] and "health/effective_rank" in summary["metrics"]


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], int]] = []

    def add_image(self, tag, image, global_step):
        self.calls.append((tag, tuple(image.shape), global_step))


class _FakeTensorBoard(TensorBoardLogger):
    """A TensorBoardLogger whose ``experiment`` records add_image calls (tensorboard is an optional
    extra, not installed in the test environment, so ``__init__`` is skipped)."""

    def __init__(self) -> None:  # no super().__init__: it needs the tensorboard package
        self.recorder = _Recorder()

    @property
    def experiment(self):  # type: ignore[override]
        return self.recorder


class _Trainer:
    def __init__(self, loggers, root: Path) -> None:
        self.loggers, self.default_root_dir = loggers, str(root)
        self.global_step, self.current_epoch = 7, 1


def test_log_image_prefers_the_logger_image_api(tmp_path):
    image = torch.rand(3, 10, 12)
    tensorboard = _FakeTensorBoard()
    assert log_image(_Trainer([tensorboard], tmp_path), "viz/pca", image) == []
    assert tensorboard.recorder.calls == [("viz/pca", (3, 10, 12), 7)]
    written = log_image(_Trainer([], tmp_path), "viz/pca", image)
    assert [p.name for p in written] == ["viz_pca_epoch001_step0000007.png"]
    assert Image.open(written[0]).size == (12, 10)
    assert log_image(_Trainer([tensorboard], tmp_path), "viz/x", image, save_files=True)[0].is_file()


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs >= 0"):
        Visualizer(every_n_epochs=-1)
    with pytest.raises(ValueError, match="every_n_steps"):
        HealthMonitor(every_n_steps=0)
