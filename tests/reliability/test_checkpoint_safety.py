"""Checkpoints: atomic writes, a last.ckpt that survives a kill at any point, no code on load, one-line
messages for truncated, refused and foreign files at every entry point, NaN / inf stops training with
the last good checkpoint kept, and which file ``ckpt_path=last`` picks."""

from __future__ import annotations

import os
import re
import signal
import time
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from toys import TINY, compose_train_cfg, loader, multicrop_batches, tiny_dino

from sslvit.callbacks import AtomicModelCheckpoint, FiniteLossGuard, NonFiniteLossError
from sslvit.evaluate import load_backbone
from sslvit.tokenizers import DVAE, load_tokenizer
from sslvit.tokenizers.io import tokenizer_record
from sslvit.train import init_backbones, train
from sslvit.utils import atomic_write
from sslvit.utils.atomic_write import atomic_torch_save
from sslvit.utils.checkpoint_io import AtomicCheckpointIO
from sslvit.utils.config_errors import ConfigError
from sslvit.utils.feature_teacher_loader import load_feature_teacher
from sslvit.utils.resume import check_resume_checkpoint, resolve_ckpt_path


# ------------------------------------------------------------------------------------- atomic saves
def test_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(3)}, path)

    def half_then_crash(obj, f):
        f.write(b"PK\x03\x04 half a zip archive")  # what a truncated torch.save leaves behind
        raise OSError("disk full")

    monkeypatch.setattr(atomic_write.torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the temporary file is gone


def test_sigkill_during_save_leaves_the_previous_file_intact(tmp_path):
    """A real kill of the writing process, half-way through the new checkpoint's bytes."""
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1, "w": torch.ones(1000)}, path)
    pid = os.fork()
    if pid == 0:  # child: start writing step 2, die in the middle of it
        real_save = torch.save

        def save_and_die(obj, f):
            real_save(obj, f)
            f.flush()
            f.truncate(f.tell() // 2)
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write.torch.save = save_and_die
        try:
            atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
        finally:
            os._exit(3)  # not reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert torch.load(path, weights_only=True)["step"] == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")  # at worst a stray temp file


def _fit_with(callback: ModelCheckpoint, root: Path, steps: int = 4) -> list[tuple[str, str]]:
    """Train tiny DINO, saving every step; record (removed file, last.ckpt target) at each removal."""
    removals: list[tuple[str, str]] = []
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        callbacks=[callback],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    remove = trainer.strategy.remove_checkpoint

    def spy(filepath):
        last = Path(str(callback.dirpath)) / "last.ckpt"
        removals.append((os.path.realpath(filepath), os.path.realpath(last) if last.exists() else "missing"))
        remove(filepath)

    trainer.strategy.remove_checkpoint = spy
    trainer.fit(tiny_dino(), train_dataloaders=loader(multicrop_batches(steps)))
    return removals


def test_last_link_never_points_to_a_deleted_checkpoint(tmp_path):
    kwargs = dict(every_n_train_steps=1, save_top_k=1, save_last="link")
    # Lightning's own callback deletes the file last.ckpt links to before re-linking it: a kill right
    # then leaves a dangling last.ckpt. This is the window AtomicModelCheckpoint closes.
    stock = _fit_with(ModelCheckpoint(dirpath=tmp_path / "stock" / "ckpt", **kwargs), tmp_path / "stock")
    assert any(removed == target for removed, target in stock)

    ours = _fit_with(AtomicModelCheckpoint(dirpath=tmp_path / "ours" / "ckpt", **kwargs), tmp_path / "ours")
    assert len(ours) == 3 and all(removed != target for removed, target in ours)
    last = tmp_path / "ours" / "ckpt" / "last.ckpt"
    assert last.is_symlink() and torch.load(last, weights_only=True)["global_step"] == 4
    assert sorted(p.name for p in last.parent.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]


# ---------------------------------------------------------------------------------- safe loading
class RunsCode:
    """Unpickling this calls ``open(marker, "w")``: the shape of any code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload_ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def test_init_from_refuses_a_pickle_that_runs_code(malicious):
    path, marker = malicious
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} cannot be loaded safely"):
        init_backbones(tiny_dino(), str(path))
    assert not marker.exists()


def test_ckpt_path_refuses_a_pickle_that_runs_code(malicious, tmp_path):
    path, marker = malicious
    with pytest.raises(ValueError, match=r"evil\.ckpt cannot be loaded safely"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # even when asked for pickles
    cfg = compose_train_cfg(tmp_path / "run", [*TINY, "callbacks=checkpoint", f"ckpt_path={path}"])
    with pytest.raises(ValueError, match=r"evil\.ckpt cannot be loaded safely"):
        train(cfg)  # through the trainer config's checkpoint IO
    assert not marker.exists()


# ------------------------------------------- one-line messages for truncated, refused and foreign files
def _eval_checkpoint(path: Path, tmp_path: Path) -> None:
    load_backbone(str(path))  # what `python eval.py eval=knn checkpoint=<file>` runs first


def _init_from(path: Path, tmp_path: Path) -> None:
    init_backbones(tiny_dino(), str(path))


def _ckpt_path(path: Path, tmp_path: Path) -> None:
    train(compose_train_cfg(tmp_path / "run", [*TINY, "callbacks=checkpoint", f"ckpt_path={path}"]))


def _teacher_path(path: Path, tmp_path: Path) -> None:
    load_feature_teacher(path=str(path))


def _tokenizer_path(path: Path, tmp_path: Path) -> None:
    load_tokenizer(path)


ENTRY_POINTS = {
    "checkpoint": _eval_checkpoint,
    "init_from": _init_from,
    "ckpt_path": _ckpt_path,
    "teacher.path": _teacher_path,
    "tokenizer.path": _tokenizer_path,
}
# torch's own text for a refused file advises turning safe loading off; it must never reach the user.
_ADVICE = ("weights_only", "Re-running", "trust", "add_safe_globals")


def _one_line(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    assert not any(advice in message for advice in _ADVICE), message
    return message


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_truncated_checkpoint_is_reported_as_truncated(entry, tmp_path):
    whole, path = tmp_path / "whole.ckpt", tmp_path / "cut.ckpt"
    atomic_torch_save({"state_dict": tiny_dino().state_dict(), "global_step": 3}, whole)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a copy that stopped half-way
    with pytest.raises(ValueError) as err:
        ENTRY_POINTS[entry](path, tmp_path)
    message = _one_line(err, path)
    assert "is truncated or not a PyTorch checkpoint" in message and "safely" not in message


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_refused_pickle_names_what_it_pickles_and_gives_no_advice_to_load_it_unsafely(
    entry, malicious, tmp_path
):
    path, marker = malicious
    with pytest.raises(ValueError) as err:
        ENTRY_POINTS[entry](path, tmp_path)
    message = _one_line(err, path)
    assert "cannot be loaded safely: it pickles" in message and "open" in message
    printed = "".join(traceback.format_exception(err.value))  # what a CLI traceback shows, causes included
    assert not any(advice in printed for advice in _ADVICE), printed
    assert not marker.exists()


def _tiny_run_model(overrides: list[str], tmp_path: Path):
    cfg = compose_train_cfg(tmp_path / "compose", [*TINY, *overrides])
    return instantiate(cfg.method, backbone=instantiate(cfg.backbone))


def test_ckpt_path_of_another_architecture_is_one_line_before_lightning_loads(tmp_path):
    """A real training checkpoint of a wider ViT (embed_dim 64 vs vit_test's 48): Lightning's own
    message lists every mismatched tensor on its own line."""
    other = _tiny_run_model(["backbone.embed_dim=64"], tmp_path)
    path = tmp_path / "wider.ckpt"
    atomic_torch_save({"state_dict": other.state_dict(), "global_step": 1, "epoch": 0}, path)
    with pytest.raises(ValueError) as err:
        _ckpt_path(path, tmp_path)
    message = _one_line(err, path)
    assert f"ckpt_path={path} does not fit this run's model" in message
    assert "checkpoint (1, 1, 64) vs model (1, 1, 48)" in message  # the first tensor: student cls_token
    assert "init_from=" in message  # the way to start from its weights instead


def test_ckpt_path_of_another_method_names_the_missing_and_unexpected_keys(tmp_path):
    ibot = _tiny_run_model(["method=ibot"], tmp_path)
    path = tmp_path / "ibot.ckpt"
    atomic_torch_save({"state_dict": ibot.state_dict(), "global_step": 1}, path)
    with pytest.raises(ValueError) as err:
        _ckpt_path(path, tmp_path)  # a DINO run
    message = _one_line(err, path)
    assert "does not fit this run's model" in message and "unexpected keys" in message


def test_check_resume_checkpoint_accepts_the_run_own_checkpoint(tmp_path):
    model = tiny_dino()
    path = tmp_path / "own.ckpt"
    atomic_torch_save({"state_dict": model.state_dict(), "global_step": 1}, path)
    check_resume_checkpoint(model, str(path))  # fits: no error
    check_resume_checkpoint(model, None)  # ckpt_path=null / auto with nothing to resume


def test_tokenizer_weights_of_another_size_are_one_line(tmp_path):
    small = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)
    large = DVAE(vocab_size=16, downsample=4, hidden_dim=4, input_kernel=3)
    path = tmp_path / "tokenizer.pt"
    torch.save({"sslvit_tokenizer": tokenizer_record(small), "state_dict": large.state_dict()}, path)
    with pytest.raises(ValueError) as err:
        load_tokenizer(path)
    message = _one_line(err, path)
    assert "weights do not fit DVAE" in message and "(16," in message and "(8," in message


# ------------------------------------------------------------------------------- non-finite loss
def test_nan_loss_stops_at_its_step_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    model = tiny_dino()
    real_loss = model.dino_loss.forward

    def nan_at_step_3(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if model.trainer.global_step == 3 else loss

    model.dino_loss.forward = nan_at_step_3
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        logger=False,
        callbacks=[FiniteLossGuard(), ckpt],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, train_dataloaders=loader(multicrop_batches(6)))
    message = str(err.value)
    assert "global step 3 (epoch 0, batch 3)" in message
    assert "train/dino_loss = nan" in message
    # the file last.ckpt links to (checked finite), not the link, which a later save would move
    assert f"last good checkpoint is {tmp_path / 'epoch=0-step=3.ckpt'}" in message
    assert (tmp_path / "last.ckpt").resolve() == tmp_path / "epoch=0-step=3.ckpt"
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 3  # steps 0-2 saved; nothing written for the bad step
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN reached the weights


# --------------------------------------------------------------------------- which checkpoint
def _touch_ckpt(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_ckpt_path_last_and_auto_pick_the_newest_complete_checkpoint(tmp_path):
    now = time.time()
    assert resolve_ckpt_path("auto", tmp_path) is None  # nothing yet: start fresh
    with pytest.raises(FileNotFoundError, match=r"last\.ckpt"):
        resolve_ckpt_path("last", tmp_path)

    epoch = _touch_ckpt(tmp_path / "checkpoints" / "epoch000.ckpt", now - 100)
    (tmp_path / "checkpoints" / "last.ckpt").symlink_to("epoch000.ckpt")
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    hpc = _touch_ckpt(tmp_path / "hpc_ckpt_1.ckpt", now - 10)  # SLURM's requeue save, newer
    assert resolve_ckpt_path("last", tmp_path) == str(hpc)
    assert resolve_ckpt_path("auto", tmp_path) == str(hpc)

    epoch.unlink()  # last.ckpt now dangles: never chosen
    hpc.unlink()
    assert resolve_ckpt_path("auto", tmp_path) is None
    sharded = tmp_path / "checkpoints" / "last-v1.ckpt"  # FSDP's sharded checkpoints are folders
    sharded.mkdir()
    assert resolve_ckpt_path("last", tmp_path) == str(sharded)
    assert resolve_ckpt_path(str(sharded), tmp_path) == str(sharded)
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt does not exist"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_command_line_files_fail_as_configuration_errors(tmp_path):
    """train.py / eval.py print a ConfigError as one line without a traceback: a foreign ckpt_path= file
    and a truncated init_from= file are ConfigErrors by the time they leave train()."""
    other = _tiny_run_model(["backbone.embed_dim=64"], tmp_path)
    path = tmp_path / "wider.ckpt"
    atomic_torch_save({"state_dict": other.state_dict(), "global_step": 1, "epoch": 0}, path)
    with pytest.raises(ConfigError, match="does not fit this run's model"):
        _ckpt_path(path, tmp_path)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ConfigError, match="is truncated"):
        train(compose_train_cfg(tmp_path / "init", [*TINY, "callbacks=none", f"init_from={cut}"]))
