"""ModelCheckpoint whose ``last.ckpt`` names a complete, finite checkpoint at every instant."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sslvit.utils.atomic_write import remove_stray_temporaries

log = logging.getLogger(__name__)


def nonfinite_state(trainer: pl.Trainer) -> tuple[list[str], int]:
    """The model's parameters / buffers and optimizer states that hold a NaN or an inf, by name, and
    the number of tensors checked. One host read per device; under DDP / FSDP the verdict is
    all-reduced, so every rank agrees (a rank's shard may be the only bad one)."""
    module = trainer.lightning_module
    names = {id(p): name for name, p in module.named_parameters()}
    named: list[tuple[str, torch.Tensor]] = [*module.named_parameters(), *module.named_buffers()]
    for i, optimizer in enumerate(trainer.optimizers):
        for param, state in optimizer.state.items():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    named.append((f"optimizer[{i}].{names.get(id(param), '?')}.{key}", value))
    floats = [(name, t.detach()) for name, t in named if t.is_floating_point() or t.is_complex()]
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in floats:
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for items in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad += [name for (name, _), ok in zip(items, finite, strict=True) if not ok]
    if not trainer.strategy.reduce_boolean_decision(not bad, all=True) and not bad:
        bad = ["(a tensor shard of another rank)"]
    return bad, len(floats)


def last_good_checkpoint(trainer: pl.Trainer) -> Path | None:
    """The most recent checkpoint of this run whose tensors were all checked finite, if any."""
    for callback in trainer.checkpoint_callbacks:
        good = getattr(callback, "last_good_model_path", "")
        if good and os.path.exists(good):
            return Path(good)
    return None


def _few(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with ``save_last="link"`` made crash-safe, and trusted only when finite.

    The files themselves are written atomically by :class:`~sslvit.utils.checkpoint_io.AtomicCheckpointIO`.
    Two steps of the stock callback still leave a window in which a kill loses ``last.ckpt``:

    * with ``save_top_k=1`` it deletes the previous checkpoint, which ``last.ckpt`` links to, *before*
      it re-points the link (a kill in between leaves a dangling link);
    * it re-points the link by deleting it and creating a new one.

    Here the link is replaced with one atomic ``rename`` of a fresh link, and a file that ``last.ckpt``
    still points to is only deleted after the link has moved on.

    A checkpoint is *good* once every parameter, buffer and optimizer state it holds was checked
    finite, just before it was written (``last_good_model_path``, kept in the callback's state). A
    checkpoint that is not good is still written under its own name (to look into), with a warning, but
    ``last.ckpt`` keeps pointing to the last good one (a ``last.ckpt`` that is a file is not
    overwritten), and ``save_top_k`` never deletes the last good one until a newer good one exists.
    At setup (start and resume) the temporary files of saves killed mid-write are removed from
    ``dirpath``. Arguments are ModelCheckpoint's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred_removals: list[str] = []
        self._kept_good: list[str] = []  # good checkpoints save_top_k dropped while no newer one was good
        self.last_good_model_path = ""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath:
            for stray in remove_stray_temporaries(self.dirpath):
                log.warning("removed %s, left by a checkpoint save that was killed mid-write", stray)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resumed: the state just loaded is the checkpoint's, so checking it checks that file (the
        # saved callback state only knew the good checkpoint before it). Else save_top_k could delete
        # the file this run resumed from after a first save that is not good.
        resumed = trainer.ckpt_path
        if resumed and os.path.exists(resumed) and not nonfinite_state(trainer)[0]:
            self.last_good_model_path = os.path.realpath(resumed)

    # ------------------------------------------------------------------------------- good or not
    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        bad, checked = nonfinite_state(trainer)
        keep = f"the last good checkpoint is {self.last_good_model_path or 'none yet'}"
        what = f"{len(bad)} of {checked} tensors are not finite ({_few(bad)})"
        if bad and self._is_last(filepath):
            log.warning("not writing %s: %s; %s", filepath, what, keep)
            return
        super()._save_checkpoint(trainer, filepath)
        if bad:
            log.warning("checkpoint %s is not good: %s; last.ckpt stays on it: %s", filepath, what, keep)
            self._last_checkpoint_saved = self.last_good_model_path  # what last.ckpt links to
            return
        self.last_good_model_path = filepath
        released, self._kept_good = self._kept_good, []
        for path in released:  # a newer good checkpoint exists: save_top_k may have them now
            self._remove_checkpoint(trainer, path)

    def _is_last(self, filepath: str) -> bool:
        return os.path.basename(filepath).startswith(self.CHECKPOINT_NAME_LAST)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "last_good_model_path": self.last_good_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        good = state_dict.get("last_good_model_path", "")
        self.last_good_model_path = good if good and os.path.exists(good) else ""

    # ------------------------------------------------------------------------------ crash safety
    @staticmethod
    def _link_checkpoint(trainer: pl.Trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            tmp = os.path.join(os.path.dirname(linkpath), f".{os.path.basename(linkpath)}.link.tmp")
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
            if os.path.isdir(linkpath) and not os.path.islink(linkpath):
                shutil.rmtree(linkpath)  # a sharded (FSDP) checkpoint folder: cannot be renamed over
            os.replace(tmp, linkpath)  # atomic: readers see the old or the new target, never nothing
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        good = self.last_good_model_path
        if good and os.path.realpath(good) == os.path.realpath(filepath):
            self._kept_good.append(filepath)  # the last good checkpoint: never deleted while it is
            return
        last = self.last_model_path
        if last and os.path.islink(last) and os.path.realpath(last) == os.path.realpath(filepath):
            self._deferred_removals.append(filepath)  # still the target of last.ckpt
            return
        super()._remove_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        pending, self._deferred_removals = self._deferred_removals, []
        for filepath in pending:
            self._remove_checkpoint(trainer, filepath)
