"""Catch wrong-typed config values (``data.batch_size=abc``) before anything is built.

Hydra parses each override on its own: ``abc`` becomes a string, ``8.5`` a float, and the mistake only
shows up deep inside a constructor as an unrelated ``TypeError``. :func:`check_config_types` compares
every plain value with the type annotation of the parameter it feeds (found through the node's
``_target_``) and reports the first mismatch with its full key. :func:`check_config_values` does the
same for values that have the right type but cannot work: a temperature divides logits, so 0 would
only show up as a ZeroDivisionError (or NaN) at the first step.
"""

from __future__ import annotations

import collections.abc
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sslvit.utils.config_errors import ConfigError


class ConfigTypeError(ConfigError, TypeError):
    """A config value does not have the type its ``_target_`` parameter declares."""


_SCALARS = (bool, int, float, str)


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether ``value`` fits ``annotation``: True / False, or None when the annotation is not checked."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(arg, value) for arg in typing.get_args(annotation)]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if value is None:
        return False if annotation in _SCALARS else None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if isinstance(container, type) and issubclass(container, collections.abc.Sequence):
        if isinstance(value, str):
            return issubclass(container, str)
        if isinstance(value, list | tuple):
            args = typing.get_args(annotation)
            if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis):
                verdicts = [_accepts(args[0], item) for item in value]
                return not any(v is False for v in verdicts)
            return True
    return None


def _hints(target: str) -> dict[str, Any]:
    try:
        obj = get_object(target)
        func = obj.__init__ if isinstance(obj, type) else obj  # type: ignore[misc]
        return typing.get_type_hints(func)
    except Exception:  # unresolvable forward references, C extensions, ...: nothing to check against
        return {}


def _walk(node: Any, key: str) -> None:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        hints = _hints(str(target)) if target else {}
        for name in node:
            name = str(name)
            if name.startswith("_") or OmegaConf.is_missing(node, name):
                continue  # a missing `???` value gets OmegaConf's own error where it is used
            try:
                value = node[name]
            except OmegaConfBaseException:
                continue  # an interpolation that only resolves later (or fails with its own message)
            full_key = f"{key}.{name}" if key else name
            if isinstance(value, DictConfig | ListConfig):
                if name in hints and isinstance(value, ListConfig) and not _has_targets(value):
                    plain = OmegaConf.to_container(value, resolve=True)
                    _check(hints[name], plain, full_key, target)
                _walk(value, full_key)
            elif name in hints:
                _check(hints[name], value, full_key, target)
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _walk(item, f"{key}[{i}]")


def _has_targets(value: ListConfig) -> bool:
    return any(isinstance(item, DictConfig) and "_target_" in item for item in value)


def _name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_name(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is not None and args:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_name(a) for a in args)}]"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _check(annotation: Any, value: Any, key: str, target: Any) -> None:
    if _accepts(annotation, value) is False:
        expected = _name(annotation)
        raise ConfigTypeError(f"{key}={value!r}: {target} expects {expected}, got {type(value).__name__}")


def check_config_types(
    cfg: DictConfig, keys: tuple[str, ...] = ("data", "backbone", "method", "trainer")
) -> None:
    """Check the plain values under ``keys`` against their ``_target_`` signatures.

    Raises:
        ConfigTypeError: the first value whose type the annotation excludes, e.g.
            ``data.batch_size='abc': sslvit.data.SSLDataModule expects int, got str``.
    """
    for key in keys:
        node = cfg.get(key)
        if isinstance(node, DictConfig):
            _walk(node, key)
    if "seed" in cfg:  # top-level keys have no _target_ to read the type from
        _check(int | None, cfg.get("seed"), "seed", "the run")


# Keys that divide something (temperatures scale logits as 1/T, the reference batch scales the lr as
# batch / reference), wherever they sit in the config.
_POSITIVE_KEY = re.compile(
    r"(^|_)temp$|^temperature(_start|_end)?$|(^|_)temp_(start|end)$|^lr_reference_batch$"
)


def check_config_values(
    cfg: DictConfig, keys: tuple[str, ...] = ("data", "backbone", "method", "callbacks")
) -> None:
    """Check that temperatures and other divisors under ``keys`` are positive numbers.

    Raises:
        ConfigError: the first such value that is not > 0, e.g. ``method.student_temp must be > 0, got 0``.
    """
    for key in keys:
        node = cfg.get(key)
        if isinstance(node, DictConfig):
            _walk_values(node, key)


def _walk_values(node: DictConfig | ListConfig, key: str) -> None:
    names: Any = list(node) if isinstance(node, DictConfig) else range(len(node))
    for name in names:
        full_key = f"{key}.{name}" if isinstance(node, DictConfig) else f"{key}[{name}]"
        try:
            value = node[name]
        except OmegaConfBaseException:
            continue  # missing or not yet resolvable: reported where it is used
        if isinstance(value, DictConfig | ListConfig):
            _walk_values(value, full_key)
        elif isinstance(node, DictConfig) and _POSITIVE_KEY.search(str(name)) and _not_positive(value):
            raise ConfigError(f"{full_key} must be > 0, got {value}")


def _not_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and not value > 0


def check_eval_config(cfg: DictConfig) -> None:
    """What ``python eval.py`` checks before loading anything: the checkpoint file, ``eval.*`` divisors.

    Raises:
        ConfigError: ``checkpoint`` names no file, or e.g. ``eval.temperature must be > 0, got 0``.
    """
    if "checkpoint" in cfg and not OmegaConf.is_missing(cfg, "checkpoint"):
        path = cfg.get("checkpoint")
        if isinstance(path, str) and not Path(path).expanduser().is_file():
            what = "is a folder, not a file" if Path(path).expanduser().is_dir() else "does not exist"
            raise ConfigError(f"checkpoint={path} {what}")
    check_config_values(cfg, keys=("eval",))
