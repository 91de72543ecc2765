"""The training progress bar refreshes every log step on an accelerator, every step on the CPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import OmegaConf
from toys import TINY, compose_train_cfg

from sslvit.callbacks import StepProgressBar
from sslvit.callbacks.progress import default_progress_bar
from sslvit.train import train


def on(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), is_global_zero=True)


def test_refresh_rate_follows_the_device() -> None:
    bar = StepProgressBar(accelerator_refresh_rate=25)
    bar.setup(on("cpu"), None, "fit")  # type: ignore[arg-type]
    assert bar.refresh_rate == 1
    bar.setup(on("cuda"), None, "fit")  # type: ignore[arg-type]
    assert bar.refresh_rate == 25 and bar._should_update(50, 1000) and not bar._should_update(51, 1000)
    assert bar._should_update(1000, 1000)  # the last batch of an epoch still shows
    bar.disable()
    assert bar.refresh_rate == 25 and not bar.is_enabled


def test_default_bar_only_where_none_is_configured() -> None:
    trainer_cfg = OmegaConf.create({"enable_progress_bar": True, "log_every_n_steps": 20})
    (bar,) = default_progress_bar(trainer_cfg, [])
    assert isinstance(bar, StepProgressBar) and bar.accelerator_refresh_rate == 20
    assert default_progress_bar(trainer_cfg, [TQDMProgressBar()]) == []
    assert default_progress_bar(OmegaConf.create({"enable_progress_bar": False}), []) == []
    with pytest.raises(ValueError, match="accelerator_refresh_rate must be >= 1"):
        StepProgressBar(accelerator_refresh_rate=0)


def test_train_shows_the_step_progress_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    installed: list[StepProgressBar] = []
    setup = StepProgressBar.setup
    monkeypatch.setattr(
        StepProgressBar, "setup", lambda self, *a, **k: (installed.append(self), setup(self, *a, **k))
    )
    overrides = [o for o in TINY if not o.startswith("trainer.enable_progress_bar")]
    train(compose_train_cfg(tmp_path, [*overrides, "trainer.fast_dev_run=true"]))
    assert len(installed) == 1 and installed[0].refresh_rate == 1  # on the CPU: every step
    assert "train/loss=" in capsys.readouterr().out  # the bar ran (on stdout), showing the loss
