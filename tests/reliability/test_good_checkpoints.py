"""A checkpoint is good only when its tensors are finite; the last good one survives save_top_k; saves
killed mid-write leave no temporary file for long; a full disk ends with one line naming the file."""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from toys import loader, multicrop_batches, tiny_dino

from sslvit.callbacks import AtomicModelCheckpoint, FiniteLossGuard, SigtermCheckpoint
from sslvit.utils import atomic_write
from sslvit.utils.atomic_write import WriteError, atomic_torch_save
from sslvit.utils.checkpoint_io import AtomicCheckpointIO


class NaNCenterAfter(Callback):
    """After optimizer step ``step`` the DINO centre turns NaN (a buffer: the gradients stay finite
    until the next loss, so only the checkpoint check can tell)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            pl_module.centering.center.fill_(float("nan"))


def test_a_non_finite_checkpoint_is_not_good_and_the_last_good_one_survives_save_top_k(tmp_path, caplog):
    stray = [tmp_path / ".epoch=0-step=1.ckpt.x1y2z3.tmp", tmp_path / ".last.ckpt.link.tmp"]
    for path in stray:  # what saves killed mid-write leave behind
        path.write_bytes(b"PK\x03\x04 half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=5,
        logger=False,
        # the loss check off: the run goes on (skipping every step) and keeps saving bad checkpoints
        callbacks=[NaNCenterAfter(3), FiniteLossGuard(enabled=False), ckpt],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with caplog.at_level(logging.WARNING, logger="sslvit.callbacks.checkpoint"):
        trainer.fit(tiny_dino(), train_dataloaders=loader(multicrop_batches(5)))

    assert not any(path.exists() for path in stray) and (tmp_path / "notes.tmp").exists()
    good = tmp_path / "epoch=0-step=2.ckpt"
    assert ckpt.last_good_model_path == str(good)
    assert (tmp_path / "last.ckpt").resolve() == good  # never moved to a bad one
    saved = torch.load(good, weights_only=True)
    assert saved["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    # save_top_k=1 deleted the bad ones in turn, but not the last good one
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=0-step=5.ckpt",
        "last.ckpt",
    ]
    bad = torch.load(tmp_path / "epoch=0-step=5.ckpt", weights_only=True)
    assert not torch.isfinite(bad["state_dict"]["centering.center"]).all()
    assert "callbacks" in saved and any("last_good_model_path" in s for s in saved["callbacks"].values())
    warned = [r.getMessage() for r in caplog.records if "is not good" in r.getMessage()]
    assert len(warned) == 3  # steps 3, 4, 5
    assert "centering.center" in warned[0] and f"the last good checkpoint is {good}" in warned[0]


def test_a_good_checkpoint_after_bad_ones_takes_over_and_the_old_good_one_goes(tmp_path):
    class NaNCenterBetween(Callback):
        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
            if trainer.global_step == 2:
                pl_module.centering.center.fill_(float("nan"))
            if trainer.global_step == 3:
                pl_module.centering.center.zero_()  # finite again (the skipped step moved nothing)

    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        callbacks=[NaNCenterBetween(), FiniteLossGuard(enabled=False), ckpt],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(tiny_dino(), train_dataloaders=loader(multicrop_batches(4)))
    newest = tmp_path / "epoch=0-step=4.ckpt"
    assert ckpt.last_good_model_path == str(newest)
    assert (tmp_path / "last.ckpt").resolve() == newest
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["epoch=0-step=4.ckpt", "last.ckpt"]


class DiskFullFile:
    """A file whose writes fail with ENOSPC after ``room`` bytes, as on a full disk."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: Any) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> DiskFullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.f.close()


def test_a_full_disk_ends_with_one_line_naming_the_file_and_the_cause(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any new file, not mkstemp's owner-only
    real_fdopen = os.fdopen
    monkeypatch.setattr(atomic_write.os, "fdopen", lambda fd, mode: DiskFullFile(real_fdopen(fd, mode), 2000))
    with pytest.raises(WriteError) as err:  # torch.save itself fails in its zip writer
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)
    monkeypatch.undo()
    assert str(err.value) == f"[Errno 28] No space left on device (checkpoint not written): '{path}'"
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial .tmp left
    assert torch.load(path, weights_only=True)["step"] == 1


def test_sigterm_does_not_save_a_non_finite_state_over_last_ckpt(tmp_path, caplog):
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        callbacks=[ckpt],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = tiny_dino()
    trainer.fit(model, train_dataloaders=loader(multicrop_batches(1)))
    good = tmp_path / "epoch=0-step=1.ckpt"
    assert (tmp_path / "last.ckpt").resolve() == good
    model.centering.center.fill_(float("inf"))
    with caplog.at_level(logging.WARNING, logger="sslvit.callbacks.preemption"):
        SigtermCheckpoint().on_exception(trainer, model, SIGTERMException())
    assert (tmp_path / "last.ckpt").is_symlink() and (tmp_path / "last.ckpt").resolve() == good
    assert any("without saving" in r.getMessage() for r in caplog.records)
    model.centering.center.zero_()  # finite again: SIGTERM saves last.ckpt as usual
    SigtermCheckpoint().on_exception(trainer, model, SIGTERMException())
    assert not (tmp_path / "last.ckpt").is_symlink()
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 1


def test_the_checkpoint_a_run_resumed_from_is_good_and_kept(tmp_path):
    """Its saved callback state cannot name itself; the resumed state is checked at the start."""

    def trainer(max_steps: int, callbacks: list[Callback]) -> L.Trainer:
        ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
        return L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            logger=False,
            callbacks=[*callbacks, FiniteLossGuard(enabled=False), ckpt],
            plugins=[AtomicCheckpointIO()],
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    trainer(2, []).fit(tiny_dino(), train_dataloaders=loader(multicrop_batches(4)))
    resumed_from = tmp_path / "epoch=0-step=2.ckpt"
    assert (tmp_path / "last.ckpt").resolve() == resumed_from
    second = trainer(4, [NaNCenterAfter(3)])  # every save of the resumed run is bad
    second.fit(tiny_dino(), train_dataloaders=loader(multicrop_batches(4)), ckpt_path=tmp_path / "last.ckpt")
    assert resumed_from.exists() and (tmp_path / "last.ckpt").resolve() == resumed_from
    assert second.checkpoint_callback.last_good_model_path == str(resumed_from)  # type: ignore[union-attr]
