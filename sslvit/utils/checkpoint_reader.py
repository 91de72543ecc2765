"""The one checkpoint reader: every file the code base reads weights from goes through it.

``checkpoint=``, ``init_from=``, ``ckpt_path=``, ``teacher.path=`` / ``teacher.weights=`` and
``tokenizer.path=`` all call :func:`read_checkpoint`: no pickled code runs, the stored configs are
checked against the allow-list of :mod:`sslvit.utils.safe_config` before anything is built from them,
and a missing, truncated, refused or foreign file is one line naming the option and the file.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sslvit.utils.safe_config import TOKENIZER_TARGETS, UnsafeConfigError, check_stored_config

RUN_CONFIG_KEY = "sslvit_config"
TOKENIZER_KEY = "sslvit_tokenizer"
# The parts of a stored run config that are ever built (evaluation's backbone and data, a feature
# teacher's backbone); the rest (method, trainer, callbacks, ...) is a record that nothing builds.
_BUILT_PARTS = ("backbone", "data")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(path: str | Path, source: str | None = None, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint as plain data: tensors and Python values only, stored configs checked.

    Accepts ``torch.save`` files (zip or legacy format; the ``argparse.Namespace`` that DINO and iBOT
    releases store is allowed) and ``.safetensors`` files.

    Args:
        path: the file.
        source: how the user named it (``init_from=/runs/x/last.ckpt``), for messages; default
            ``checkpoint <path>``.
        mmap: map tensors from the file instead of reading them (zip-format files only; others are
            read): cheap when only the keys and shapes are needed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line: the file is truncated or corrupt, pickles objects that could run code,
            does not hold a dict, or stores a config naming something outside the allow-list.
    """
    path = Path(path)
    source = source or f"checkpoint {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{source} does not exist")
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path, source)
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(
                    path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
                )
        except Exception as err:  # the type depends on the content: UnpicklingError, RuntimeError, EOFError
            # `from None`: a printed traceback would otherwise show torch's message as the cause, with
            # its advice to load the file unsafely; what matters of it is in ours.
            raise ValueError(_load_error(source, err)) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a dict of tensors")
    check_stored_configs(obj, source)
    return obj


def _read_safetensors(path: Path, source: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as err:  # safetensors raises its own error type on a damaged header
        raise ValueError(f"{source} is truncated or not a safetensors file ({_first_line(err)})") from None


def _load_error(source: str, err: Exception) -> str:
    """One line for a failed ``torch.load``; never torch's advice to turn safe loading off."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            what = f"it pickles {found.group(1)}, which could run code on load"
        else:  # a damaged pickle stream also ends here; say what the unpickler saw
            detail = text.split("WeightsUnpickler error:")[-1].strip()
            what = f"its pickle holds something other than tensors and plain values ({_first_line(detail)})"
        return f"{source} cannot be loaded safely: {what}; only tensors and plain Python values are read"
    return f"{source} is truncated or not a PyTorch checkpoint ({_first_line(err)})"


def _first_line(err: Exception | str) -> str:
    """The first sentence of an error message; the error's type when there is no text (``EOFError()``)."""
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else ""
    if isinstance(err, str) or (isinstance(err, RuntimeError | OSError) and first):
        return first
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def check_stored_configs(checkpoint: Mapping[str, Any], source: str) -> None:
    """Refuse a checkpoint whose stored run config or tokenizer record could build anything but our
    allowed classes (see :mod:`sslvit.utils.safe_config`), before any of it is built."""
    run_cfg = checkpoint.get(RUN_CONFIG_KEY)
    if run_cfg is not None:
        if not isinstance(run_cfg, Mapping):
            raise UnsafeConfigError(f"{source}: {RUN_CONFIG_KEY} is a {type(run_cfg).__name__}, not a dict")
        for part in _BUILT_PARTS:
            check_stored_config(run_cfg.get(part), source, f"{RUN_CONFIG_KEY}.{part}")
    record = checkpoint.get(TOKENIZER_KEY)
    if record is not None:
        if not isinstance(record, Mapping) or not isinstance(record.get("config", {}), Mapping):
            raise UnsafeConfigError(f"{source}: {TOKENIZER_KEY} is not a {{target, config}} record")
        target = record.get("target")
        if not isinstance(target, str) or target not in TOKENIZER_TARGETS:
            raise UnsafeConfigError(
                f"{source} is refused: its {TOKENIZER_KEY} record names {target!r}, which is not one of "
                "sslvit's tokenizer classes; nothing was built"
            )
        # The arguments are passed as they are (never built by Hydra), so plain values suffice.
        check_stored_config(record.get("config", {}), source, f"{TOKENIZER_KEY}.config", frozenset())
