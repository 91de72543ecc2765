"""ModelCheckpoint whose ``last.ckpt`` names a complete checkpoint at every instant."""

from __future__ import annotations

import os
import shutil
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with ``save_last="link"`` made crash-safe.

    The files themselves are written atomically by :class:`~sslvit.utils.checkpoint_io.AtomicCheckpointIO`.
    Two steps of the stock callback still leave a window in which a kill loses ``last.ckpt``:

    * with ``save_top_k=1`` it deletes the previous checkpoint, which ``last.ckpt`` links to, *before*
      it re-points the link (a kill in between leaves a dangling link);
    * it re-points the link by deleting it and creating a new one.

    Here the link is replaced with one atomic ``rename`` of a fresh link, and a file that ``last.ckpt``
    still points to is only deleted after the link has moved on. Arguments are ModelCheckpoint's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred_removals: list[str] = []

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
