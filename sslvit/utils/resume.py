"""Which checkpoint ``ckpt_path=last`` / ``ckpt_path=auto`` resume from, and whether it fits the model."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sslvit.utils.checkpoint import describe_mismatch
from sslvit.utils.checkpoint_reader import read_checkpoint
from sslvit.utils.fsdp import unwrapped_name


def resume_candidates(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run folder, newest first.

    ``checkpoints/last*.ckpt`` (ModelCheckpoint's link or file, or the SIGTERM save) and
    ``hpc_ckpt_<n>.ckpt`` (written by Lightning on SLURM's requeue signal). A sharded FSDP checkpoint
    is a folder; a dangling link is skipped. Files are written by rename, so any file found is whole.
    """
    found = [
        *sorted((output_dir / "checkpoints").glob("last*.ckpt")),
        *sorted(output_dir.glob("hpc_ckpt_*.ckpt")),
    ]
    existing = [path for path in found if path.exists()]  # exists() follows links
    return sorted(existing, key=lambda path: path.resolve().stat().st_mtime, reverse=True)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """Map the ``ckpt_path`` config value to the checkpoint Lightning should resume from.

    * ``null``: start fresh.
    * ``last``: the newest checkpoint of this run folder (:func:`resume_candidates`); an error if none.
    * ``auto``: the same, but start fresh when there is none (for job scripts that are requeued).
    * a path: that file (or sharded-checkpoint folder), which must exist.
    """
    if not ckpt_path:
        return None
    if ckpt_path in ("last", "auto"):
        candidates = resume_candidates(output_dir)
        if candidates:
            return str(candidates[0])
        if ckpt_path == "auto":
            return None
        raise FileNotFoundError(
            f"ckpt_path=last: no {output_dir / 'checkpoints' / 'last.ckpt'} (nor hpc_ckpt_*.ckpt); "
            "resume inside the earlier run's folder with hydra.run.dir=<that folder>"
        )
    if not Path(ckpt_path).exists():
        raise FileNotFoundError(f"ckpt_path {ckpt_path} does not exist")
    return ckpt_path


def check_resume_checkpoint(model: nn.Module, ckpt_path: str | None) -> None:
    """Read ``ckpt_path=`` with the one checkpoint reader and compare its weights with ``model`` before
    Lightning loads it, so that a truncated, refused or foreign file is one line, not a traceback or a
    wall of size mismatches.

    The tensors are memory-mapped, not read: only names and shapes are compared. A sharded FSDP
    checkpoint (a folder) is left to Lightning.

    Raises:
        FileNotFoundError / ValueError: see :func:`sslvit.utils.checkpoint_reader.read_checkpoint`; or the
            stored weights do not fit the model (another architecture or another method).
    """
    if ckpt_path is None or Path(ckpt_path).is_dir():
        return
    source = f"ckpt_path={ckpt_path}"
    checkpoint = read_checkpoint(ckpt_path, source, mmap=True)
    stored = checkpoint.get("state_dict")
    if not isinstance(stored, dict):
        raise ValueError(
            f"{source} is not a Lightning training checkpoint (no state_dict); "
            "to start from its weights use init_from=<file>"
        )
    # Wrappers (FSDP units, activation checkpointing, torch.compile) rename parameters; compare the
    # names as the plain model spells them.
    own = {unwrapped_name(k): v for k, v in model.state_dict().items()}
    theirs = {unwrapped_name(k): v for k, v in stored.items()}
    mismatch = describe_mismatch(own, theirs)
    if mismatch:
        raise ValueError(
            f"{source} does not fit this run's model: {mismatch}; resume with the config it was "
            "trained with, or start from its backbone with init_from=<file>"
        )
