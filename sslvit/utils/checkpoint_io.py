"""Checkpoint writing that never leaves a half-written file behind, and reading that runs no code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from sslvit.utils.atomic_write import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose saves are atomic (see :mod:`sslvit.utils.atomic_write`) and whose
    loads never unpickle arbitrary objects: ``ckpt_path=`` goes through ``torch.load(weights_only=True)``
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
