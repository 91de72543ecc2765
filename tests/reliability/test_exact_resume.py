"""Exact resume: a run killed mid-epoch (SIGKILL) or pre-empted (SIGTERM) and continued with
``ckpt_path=last`` reproduces the uninterrupted run's per-step losses and final weights.

One uninterrupted reference run (in-process) and two interrupted runs (subprocesses, a real kill),
resumed in-process. Schedule: ViT-test DINO on fake data, 2 epochs x 6 batches = 12 optimizer steps,
drop path on (so the model's own random numbers matter), a checkpoint every 4 steps (mid-epoch).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from toys import TINY, compose_train_cfg

from sslvit.train import train

REPO = Path(__file__).resolve().parents[2]
RUN = [
    *TINY,
    "callbacks=checkpoint",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=6",
    "trainer.log_every_n_steps=1",
    "backbone.drop_path_rate=0.1",
    "callbacks.checkpoint.every_n_epochs=null",
    "callbacks.checkpoint.every_n_train_steps=4",
]
KILL_AT, SIGTERM_AT = 6, 9  # steps the subprocesses reach before the signal (checkpoints at 4 and 8)


def losses(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from the run folder's one metrics file (a resumed run continues it)."""
    assert not list(run_dir.glob("csv/version_*"))
    with (run_dir / "csv" / "metrics.csv").open() as f:
        logged = [
            (int(row["step"]), float(row["train/loss"])) for row in csv.DictReader(f) if row.get("train/loss")
        ]
    steps = [step for step, _ in logged]
    assert steps == sorted(set(steps)), steps  # in order, none twice (the resumed steps replaced)
    return dict(logged)


def start(run_dir: Path, pause_at: int) -> subprocess.Popen:
    marker = run_dir / "paused"
    overrides = [
        *RUN,
        f"hydra.run.dir={run_dir}",
        "+callbacks.pause._target_=pause_callback.PauseAtStep",
        f"+callbacks.pause.step={pause_at}",
        f"+callbacks.pause.marker={marker}",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(Path(__file__).parent)}
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before reaching its pause step"
        assert time.monotonic() < deadline, "run did not reach its pause step in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    dirs = {name: root / name for name in ("reference", "killed", "sigterm")}
    for path in dirs.values():
        path.mkdir()
    killed, stopped = start(dirs["killed"], KILL_AT), start(dirs["sigterm"], SIGTERM_AT)
    try:
        train(compose_train_cfg(dirs["reference"], RUN))  # meanwhile, the uninterrupted run

        wait_for(dirs["killed"] / "paused", killed)
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL

        wait_for(dirs["sigterm"] / "paused", stopped)
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(120) == 0, (root / "sigterm.log").read_text()[-3000:]
    finally:
        for proc in (killed, stopped):
            if proc.poll() is None:
                proc.kill()
    for name in ("killed", "sigterm"):
        dirs[f"{name}_before"] = dirs[name] / "checkpoint_at_resume.pt"
        last = torch.load(dirs[name] / "checkpoints" / "last.ckpt", weights_only=True)
        torch.save({"global_step": last["global_step"]}, dirs[f"{name}_before"])
        train(compose_train_cfg(dirs[name], [*RUN, "ckpt_path=last"]))
    return dirs


def final_teacher(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 12
    return {k: v for k, v in state["state_dict"].items() if k.startswith(("teacher.", "centering."))}


def assert_same_trajectory(resumed: dict[int, float], reference: dict[int, float], first: int) -> None:
    assert sorted(reference) == list(range(12))
    assert sorted(resumed) == list(range(12))  # before the resume from the interrupted run, then ours
    steps = [s for s in resumed if s >= first]
    assert steps == list(range(first, 12))
    for step in steps:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    # the comparison has teeth: the loss moves by far more than the tolerance from step to step
    assert min(abs(reference[s + 1] - reference[s]) for s in range(first, 11)) > 1e-4


def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(runs):
    # killed at step 6 of 12 (epoch 0 has 6 batches); the newest checkpoint is from step 4, mid-epoch
    assert torch.load(runs["killed_before"], weights_only=True)["global_step"] == 4
    assert_same_trajectory(losses(runs["killed"]), losses(runs["reference"]), first=4)
    reference, resumed = final_teacher(runs["reference"]), final_teacher(runs["killed"])
    assert reference.keys() == resumed.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


def test_sigterm_saves_last_and_resume_loses_no_progress(runs):
    log = (runs["sigterm"].parent / "sigterm.log").read_text()
    assert "SIGTERM: stopped after global step 9" in log
    # last.ckpt is the state at the signal (step 9, epoch 1 batch 3), not the periodic one of step 8
    assert torch.load(runs["sigterm_before"], weights_only=True)["global_step"] == SIGTERM_AT
    assert_same_trajectory(losses(runs["sigterm"]), losses(runs["reference"]), first=9)
    summary = json.loads((runs["sigterm"] / "summary.json").read_text())
    assert summary["status"] == "completed"  # the resumed run's summary replaced the pre-empted one
    reference, resumed = final_teacher(runs["reference"]), final_teacher(runs["sigterm"])
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
