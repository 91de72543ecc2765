"""Which checkpoint ``ckpt_path=last`` / ``ckpt_path=auto`` resume from."""

from __future__ import annotations

from pathlib import Path


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
