"""Writing files so that a reader sees the old content or the new, never half of it.

Every file the package writes (checkpoints, tokenizers, exported weights, summaries, sweep tables, the
continued metrics CSV) goes through :func:`atomic_write`: the content is written to a temporary file in
the target's folder, flushed to disk, and renamed over the target. A rename within one file system is
atomic, so a process killed mid-write leaves the previous file intact (plus, at worst, a stray
``.<name>.*.tmp`` file that :func:`remove_stray_temporaries` clears).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

# mkstemp creates files only their owner can read; a written file gets the mode any new file would get.
_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"  # of files written and then renamed: a leftover one is a write that was killed


class WriteError(OSError):
    """A file could not be written (disk full, quota, I/O error); str() is one line naming the path and
    the cause, e.g. ``[Errno 28] No space left on device (checkpoint not written): '/run/last.ckpt'``."""


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save fails on a failed write with a message of its zip writer
    ("unexpected pos ...") whose context is the OSError that says why (e.g. no space left)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], what: str = "file") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync, then rename it over ``path``.

    Args:
        path: the file to (over)write; its folder is created if missing.
        write: writes the content to the binary file object it is given.
        what: names the content in the error message ("checkpoint", "file").

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        WriteError: the write failed (e.g. a full disk): one line naming ``path`` and the OS reason; the
            temporary file is removed and a previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(err) if isinstance(err, Exception) else None  # not on Ctrl-C
        if cause is not None and not isinstance(cause, WriteError):
            # One line instead of, e.g., torch's zip writer's; the partial file is gone.
            if cause.errno is None:
                raise WriteError(f"{cause} ({what} not written): '{path}'") from None
            raise WriteError(cause.errno, f"{cause.strerror} ({what} not written)", str(path)) from None
        raise
    return path


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically, line endings as given (see :func:`atomic_write`)."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON with a final newline to ``path`` atomically."""
    return atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def atomic_torch_save(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """``torch.save(obj)`` to ``path`` atomically, so a killed save never leaves a truncated checkpoint."""
    return atomic_write(path, lambda f: torch.save(obj, f), what=what)


def remove_stray_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed mid-way left in ``folder`` (``.<name>.*.tmp``:
    :func:`atomic_write`'s and the checkpoint link's). Call it when no write is running."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stray = [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)]
    for p in stray:
        if p.is_file() or p.is_symlink():
            p.unlink(missing_ok=True)
    return stray
