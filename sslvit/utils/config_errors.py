"""Configuration mistakes as one line naming the key, instead of a traceback from deep inside a constructor.

:class:`ConfigError` is what the project raises for a value that cannot work. The command-line wrappers
(``train.py``, ``eval.py``) print it as one line and exit non-zero (:func:`reporting_config_errors`);
any other exception keeps its traceback, because it is a bug rather than a typo. Values are checked
where they are used: building blocks raise plain ``ValueError`` in their constructors, and
:func:`building` turns such an error, raised while Hydra instantiates a config node, into a
:class:`ConfigError` that names the node's key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig

_T = TypeVar("_T")


class ConfigError(CompactHydraException, ValueError):
    """A configuration value that cannot work; the message is one line and names the key.

    A ``CompactHydraException``, so that where Hydra reports it (a failed job of a multirun) it also
    prints the message alone, without a traceback.
    """


def building(key: str, node: Any, build: Callable[[], _T]) -> _T:
    """``build()`` (a Hydra ``instantiate`` of config node ``key``), with value errors named by key.

    A constructor's ``ValueError`` whose message starts with one of its parameters (``student_temp must
    be > 0, got 0``) becomes ``ConfigError("method.student_temp must be > 0, got 0")``; other value
    errors, and a missing file or folder, are prefixed with the node's key. Any other exception passes
    through unchanged.
    """
    try:
        return build()
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, ValueError | FileNotFoundError) or isinstance(cause, ConfigError):
            raise
        where = _full_key(str(err)) or key
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise ConfigError(_named(key, where, node, message)) from err


def _full_key(hydra_message: str) -> str | None:
    # Hydra ends the message with "full_key: data.train_set" for a node below the one instantiated.
    match = re.search(r"^full_key: (\S+)$", hydra_message, flags=re.MULTILINE)
    return match.group(1) if match else None


def _named(key: str, where: str, node: Any, message: str) -> str:
    first_word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", message)
    sub = node
    below = where[len(key) + 1 :].split(".") if where.startswith(key + ".") else []
    for part in below:  # down to the node that failed
        sub = sub.get(part) if isinstance(sub, DictConfig) else None
    if first_word and isinstance(sub, DictConfig) and first_word.group(0) in sub:
        return f"{where}.{message}"
    return f"{where}: {message}"


@contextmanager
def reading_files() -> Iterator[None]:
    """A file named on the command line (``ckpt_path=``, ``init_from=``, ``checkpoint=``) that is missing,
    truncated, unsafe or of another model: its reader's one-line ``ValueError`` / ``FileNotFoundError``
    becomes a :class:`ConfigError`, reported as one line like any other configuration mistake.

    Wrap only the reading of such files: a value error raised elsewhere stays a bug with a traceback.
    """
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as err:
        lines = str(err).strip().splitlines()
        raise ConfigError(lines[0] if lines else type(err).__name__) from err


@contextmanager
def reporting_config_errors() -> Iterator[None]:
    """Let a :class:`ConfigError` end a single run as one line on stderr (exit status 1).

    In a multirun the error is re-raised: Hydra records the job as failed, runs the next one and
    reports the message at the end. ``HYDRA_FULL_ERROR=1`` keeps the traceback, as for Hydra's own errors.
    """
    try:
        yield
    except ConfigError as err:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        raise SystemExit(f"error: {err}") from None
