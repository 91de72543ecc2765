"""Checkpoint writing that never leaves a half-written file behind, and reading that runs no code."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

# mkstemp creates files only their owner can read; a checkpoint gets the mode any new file would get.
_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"  # of files written and then renamed: a leftover one is a save that was killed


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); str() is one line naming the
    path and the cause, e.g.
    ``[Errno 28] No space left on device (checkpoint not written): '/run/checkpoints/last.ckpt'``."""


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save fails on a failed write with a message of its zip writer
    ("unexpected pos ...") whose context is the OSError that says why (e.g. no space left)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A rename within one file system is atomic, so a process killed mid-save leaves the previous file
    intact (plus, at worst, a stray ``.tmp`` file that :func:`remove_stray_temporaries` clears), never a
    truncated checkpoint. A write that fails (e.g. a full disk) removes its temporary file and raises
    :class:`CheckpointWriteError` naming ``path`` and the cause.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(err) if isinstance(err, Exception) else None  # not on Ctrl-C
        if cause is not None and not isinstance(cause, CheckpointWriteError):
            # One line instead of the zip writer's; the partial file is gone.
            if cause.errno is None:
                raise CheckpointWriteError(f"{cause} (checkpoint not written): '{path}'") from None
            reason = f"{cause.strerror} (checkpoint not written)"
            raise CheckpointWriteError(cause.errno, reason, str(path)) from None
        raise


def remove_stray_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that saves killed mid-write left in ``folder`` (``.<name>.*.tmp``:
    :func:`atomic_torch_save`'s and the checkpoint link's). Call it when no save is running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stray = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
    for p in stray:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
    return stray


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose saves are atomic (see :func:`atomic_torch_save`) and whose loads
    never unpickle arbitrary objects: ``ckpt_path=`` goes through ``torch.load(weights_only=True)``
    whatever the caller asks, so a crafted file cannot run code (``init_from=`` does the same in
    :func:`sslvit.utils.checkpoint_reader.read_checkpoint`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... depending on the content
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(
                f"checkpoint {path} cannot be loaded safely (only tensors and plain Python values are "
                f"accepted): {first_line}"
            ) from err
