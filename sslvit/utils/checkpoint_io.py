"""Checkpoint writing that never leaves a half-written file behind, and reading that runs no code."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A rename within one file system is atomic, so a process killed mid-save leaves the previous file
    intact (plus, at worst, a stray ``.tmp`` file), never a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
