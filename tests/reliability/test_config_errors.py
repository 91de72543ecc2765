"""Configuration mistakes: refused at start, as one line that names the key (and no traceback at the CLI)."""

from __future__ import annotations

import json

import lightning as L
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from toys import TINY, compose_train_cfg

from sslvit.train import train
from sslvit.utils import trainer_check
from sslvit.utils.config_errors import ConfigError, building
from sslvit.utils.trainer_check import check_trainer


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.student_temp=0", "method.student_temp must be > 0, got 0"),
        ("method.teacher_temp=-0.1", "method.teacher_temp must be > 0, got -0.1"),
        ("method.warmup_teacher_temp=0.0", "method.warmup_teacher_temp must be > 0, got 0.0"),
        ("method.optim.lr_reference_batch=0", "method.optim.lr_reference_batch must be > 0, got 0"),
        ("callbacks=knn", None),  # a positive temperature passes
    ],
)
def test_divisors_are_checked_before_anything_is_built(tmp_path, override, message):
    cfg = compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true", override])
    if message is None:
        from sslvit.utils.config_check import check_config_values

        check_config_values(cfg)
        return
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value) == message
    assert not (tmp_path / "csv").exists()  # stopped before the logger was made


def test_gumbel_temperature_is_checked(tmp_path):
    cfg = compose_train_cfg(tmp_path, ["method=dvae", "method.temperature_end=0", "trainer=cpu"])
    with pytest.raises(ConfigError, match=r"^method.temperature_end must be > 0, got 0$"):
        train(cfg)


def test_seed_of_the_wrong_type_names_the_key(tmp_path):
    cfg = compose_train_cfg(tmp_path, [*TINY, "seed=abc"])
    with pytest.raises(ConfigError, match=r"^seed='abc': .*expects int \| None, got str$"):
        train(cfg)


def test_constructor_value_errors_name_the_key():
    cfg = OmegaConf.create(
        {
            "method": {"loss": {"_target_": "sslvit.losses.DINOLoss", "student_temp": 0}},
            "sinkhorn": {"_target_": "sslvit.losses.SinkhornKnopp", "num_iters": 0},
            "bug": {"_target_": "builtins.int", "_args_": [[1]]},  # a TypeError: a bug, not a config error
        }
    )
    with pytest.raises(ConfigError, match=r"^method.loss.student_temp must be > 0, got 0$"):
        building("method", cfg.method, lambda: instantiate(cfg.method))
    with pytest.raises(ConfigError, match=r"^sinkhorn: SinkhornKnopp needs num_iters >= 1, got 0$"):
        building("sinkhorn", cfg.sinkhorn, lambda: instantiate(cfg.sinkhorn))
    with pytest.raises(Exception) as err:
        building("bug", cfg.bug, lambda: instantiate(cfg.bug))
    assert not isinstance(err.value, ConfigError)


def test_a_run_without_an_end_is_refused(monkeypatch):
    monkeypatch.setattr(trainer_check, "usable_cpu_cores", lambda: 2)
    with pytest.raises(ConfigError, match=r"max_epochs=-1 .* set trainer.max_steps"):
        check_trainer(L.Trainer(accelerator="cpu", max_epochs=-1, logger=False))
    with pytest.raises(ConfigError, match=r"max_epochs=None"):  # max_time alone: no end in steps
        check_trainer(L.Trainer(accelerator="cpu", max_epochs=None, max_time="00:00:01:00", logger=False))
    check_trainer(L.Trainer(accelerator="cpu", max_epochs=None, logger=False))  # Lightning's 1000 epochs
    check_trainer(L.Trainer(accelerator="cpu", max_epochs=-1, max_steps=10, logger=False))
    check_trainer(L.Trainer(accelerator="cpu", max_epochs=None, max_steps=10, logger=False))


def test_more_cpu_processes_than_cores_are_refused(monkeypatch):
    monkeypatch.setattr(trainer_check, "usable_cpu_cores", lambda: 2)
    with pytest.raises(ConfigError, match=r"^trainer.devices=3 on the CPU .* on 2 usable cores"):
        check_trainer(L.Trainer(accelerator="cpu", devices=3, max_steps=1, logger=False))
    check_trainer(L.Trainer(accelerator="cpu", devices=2, max_steps=1, logger=False))  # ddp_sim on 2 cores


def test_max_epochs_minus_one_trains_to_max_steps(tmp_path):
    cfg = compose_train_cfg(
        tmp_path, [*TINY, "trainer.max_epochs=-1", "trainer.max_steps=3", "callbacks=none"]
    )
    summary = train(cfg)
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_eval_checks_the_checkpoint_file_and_its_divisors(tmp_path):
    from sslvit.utils.config_check import check_eval_config

    missing = tmp_path / "nope.ckpt"
    cfg = OmegaConf.create({"checkpoint": str(missing), "eval": {"name": "knn", "temperature": 0.07}})
    with pytest.raises(ConfigError, match=rf"^checkpoint={missing} does not exist$"):
        check_eval_config(cfg)
    cfg.checkpoint = str(tmp_path)
    with pytest.raises(ConfigError, match=r"is a folder, not a file$"):
        check_eval_config(cfg)
    missing.write_bytes(b"")
    cfg.checkpoint = str(missing)
    check_eval_config(cfg)
    cfg.eval.temperature = 0
    with pytest.raises(ConfigError, match=r"^eval.temperature must be > 0, got 0$"):
        check_eval_config(cfg)
