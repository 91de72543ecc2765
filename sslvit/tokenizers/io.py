"""Tokenizer files: written at the end of stage 1, read (frozen) by a masked-image-modelling stage 2.

Two layouts, read by the one checkpoint reader (:func:`sslvit.utils.checkpoint_reader.read_checkpoint`: no
pickled code runs, and the record's class must be one of our tokenizer classes):

* ours: ``{"sslvit_tokenizer": {"target": "sslvit.tokenizers.<Class>", "config": {...}}, "state_dict":
  {...}}``, either as a standalone ``tokenizer.pt`` or inside a stage-1 Lightning checkpoint
  (``last.ckpt``), where the weights sit under the training module's prefix: ``tokenizer.`` for dVAE,
  ``student.`` for VQ-KD;
* DALL-E: a dVAE encoder state dict in the released parameter layout (``blocks.input.w``, ...),
  optionally under a prefix such as ``encoder.`` or inside ``{"state_dict": ...}``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.tokenizers.dalle import DALLETokenizer
from sslvit.utils.atomic_write import atomic_torch_save
from sslvit.utils.checkpoint import describe_mismatch
from sslvit.utils.checkpoint_reader import TOKENIZER_KEY, read_checkpoint

__all__ = ["TOKENIZER_KEY", "load_tokenizer", "save_tokenizer", "tokenizer_record"]

_FORMATS = ("auto", "sslvit", "dalle")
# Where a stage-1 Lightning checkpoint keeps the tokenizer's weights: DVAETraining holds it as
# `tokenizer`, VQKDTraining shares its children with its `student` (next to its frozen `feature_teacher`).
_STAGE1_PREFIXES = ("tokenizer.", "student.")


def tokenizer_record(tokenizer: nn.Module) -> dict[str, Any]:
    """``{"target": class path, "config": constructor arguments}``: enough to rebuild ``tokenizer``."""
    config = getattr(tokenizer, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(tokenizer).__name__} has no `config` dict of constructor arguments")
    cls = type(tokenizer)
    return {"target": f"{cls.__module__}.{cls.__qualname__}", "config": dict(config)}


def save_tokenizer(tokenizer: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` to ``path`` (atomically, see :func:`~sslvit.utils.atomic_write.atomic_write`)."""
    state = {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()}
    payload = {TOKENIZER_KEY: tokenizer_record(tokenizer), "state_dict": state}
    return atomic_torch_save(payload, path, what="tokenizer")


def load_tokenizer(path: str | os.PathLike[str] | None, format: str = "auto") -> nn.Module:
    """Load a tokenizer file as a frozen module in eval mode.

    Args:
        path: a ``tokenizer.pt``, a stage-1 checkpoint (``last.ckpt``) or a DALL-E-format encoder file.
        format: ``auto`` (detect), ``sslvit`` or ``dalle``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be loaded safely or is not in the requested layout.
    """
    if format not in _FORMATS:
        raise ValueError(f"tokenizer.format must be one of {', '.join(_FORMATS)}, got {format!r}")
    if not path:
        raise ValueError("no tokenizer file given: set tokenizer.path=<stage-1 checkpoint or tokenizer.pt>")
    path = Path(path)
    payload = read_checkpoint(path, f"tokenizer file {path}")
    if format == "auto":
        format = "sslvit" if TOKENIZER_KEY in payload else "dalle"
    tokenizer = _from_sslvit(payload, path) if format == "sslvit" else _from_dalle(payload, path)
    tokenizer.requires_grad_(False)
    return tokenizer.eval()


def _from_sslvit(payload: dict, path: Path) -> nn.Module:
    record = payload.get(TOKENIZER_KEY)
    if not isinstance(record, dict) or "target" not in record:
        raise ValueError(f"{path} is not an sslvit tokenizer file (no {TOKENIZER_KEY!r} record)")
    # read_checkpoint has checked the record: the target is one of our tokenizer classes.
    target = str(record["target"])
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    tokenizer = cls(**record.get("config", {}))
    state = _tokenizer_weights(tokenizer, payload.get("state_dict", {}))
    mismatch = describe_mismatch(tokenizer.state_dict(), state)
    if mismatch:
        raise ValueError(f"{path}: weights do not fit {class_name}: {mismatch}")
    tokenizer.load_state_dict(state, strict=True)
    return tokenizer


def _tokenizer_weights(tokenizer: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """The tokenizer's entries of ``state``: the whole dict of a ``tokenizer.pt``, or the entries under
    the stage-1 prefix whose names are exactly the tokenizer's (a frozen teacher's keys are left out)."""
    own = set(tokenizer.state_dict())
    if own <= set(state):
        return state
    best: dict[str, Any] = {}
    for prefix in _STAGE1_PREFIXES:
        found = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if len(own & set(found)) > len(own & set(best)):
            best = found
    return best or state


def _from_dalle(payload: dict, path: Path) -> nn.Module:
    state = payload.get("state_dict", payload)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        return DALLETokenizer.from_state_dict(tensors)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is neither an sslvit tokenizer nor a DALL-E encoder: {err}") from err
