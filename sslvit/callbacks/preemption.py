"""Save ``last.ckpt`` when the job is told to stop (SIGTERM: pre-emption, ``scancel``, time limit)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sslvit.callbacks.checkpoint import nonfinite_state

log = logging.getLogger(__name__)


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where this run keeps ``last.ckpt``: the ModelCheckpoint's folder, else ``<root>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


class SigtermCheckpoint(Callback):
    """On SIGTERM, finish the current batch, write ``last.ckpt`` and stop.

    Lightning already turns SIGTERM into a clean stop after the running batch (``SIGTERMException``,
    raised on every rank at the same step); this callback adds the checkpoint, so that
    ``ckpt_path=last`` continues exactly where the job stopped instead of at the last periodic save.
    Under SLURM, Lightning's ``SLURMEnvironment(auto_requeue=True)`` handles the requeue signal
    (SIGUSR1) itself: it writes ``hpc_ckpt_<n>.ckpt`` and requeues the job (see conf/trainer/slurm.yaml).
    """

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return  # a crash (e.g. a non-finite loss) must not overwrite the last good checkpoint
        # A state with NaN / inf tensors is not saved either (the last good checkpoint stays).
        path = last_checkpoint_path(trainer)
        bad, checked = nonfinite_state(trainer)
        if bad:  # last.ckpt stays the last good state
            log.warning(
                "SIGTERM: stopped after global step %d without saving: %d of %d tensors are not finite",
                trainer.global_step,
                len(bad),
                checked,
            )
            return
        # The atomic save renames a new file over the path: a `last.ckpt` link is replaced, not written
        # through into the periodic checkpoint it pointed to.
        trainer.save_checkpoint(path)
        log.warning(
            "SIGTERM: stopped after global step %d and saved %s; continue with ckpt_path=last",
            trainer.global_step,
            path,
        )
