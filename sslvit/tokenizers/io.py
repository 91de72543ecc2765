"""Tokenizer files: written at the end of stage 1, read (frozen) by a masked-image-modelling stage 2.

Two layouts load with ``torch.load(weights_only=True)``:

* ours: ``{"sslvit_tokenizer": {"target": "sslvit.tokenizers.<Class>", "config": {...}}, "state_dict":
  {...}}``, either as a standalone ``tokenizer.pt`` or inside a stage-1 Lightning checkpoint (weights
  prefixed ``tokenizer.``);
* DALL-E: a dVAE encoder state dict in the released parameter layout (``blocks.input.w``, ...),
  optionally under a prefix such as ``encoder.`` or inside ``{"state_dict": ...}``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslvit.tokenizers.dalle import DALLETokenizer

TOKENIZER_KEY = "sslvit_tokenizer"
_FORMATS = ("auto", "sslvit", "dalle")
_ALLOWED_MODULE = "sslvit.tokenizers."


def tokenizer_record(tokenizer: nn.Module) -> dict[str, Any]:
    """``{"target": class path, "config": constructor arguments}``: enough to rebuild ``tokenizer``."""
    config = getattr(tokenizer, "config", None)
    if not isinstance(config, dict):
        raise TypeError(f"{type(tokenizer).__name__} has no `config` dict of constructor arguments")
    cls = type(tokenizer)
    return {"target": f"{cls.__module__}.{cls.__qualname__}", "config": dict(config)}


def save_tokenizer(tokenizer: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``tokenizer`` to ``path`` (atomically: a temporary file renamed over the target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in tokenizer.state_dict().items()}
    payload = {TOKENIZER_KEY: tokenizer_record(tokenizer), "state_dict": state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError or RuntimeError depending on the content
        raise ValueError(
            f"tokenizer file {path} cannot be loaded safely: {str(err).splitlines()[0]}"
        ) from err
    if not isinstance(payload, dict):
        raise ValueError(f"tokenizer file {path} holds a {type(payload).__name__}, not a dict of tensors")
    if format == "auto":
        format = "sslvit" if TOKENIZER_KEY in payload else "dalle"
    tokenizer = _from_sslvit(payload, path) if format == "sslvit" else _from_dalle(payload, path)
    tokenizer.requires_grad_(False)
    return tokenizer.eval()


def _from_sslvit(payload: dict, path: Path) -> nn.Module:
    record = payload.get(TOKENIZER_KEY)
    if not isinstance(record, dict) or "target" not in record:
        raise ValueError(f"{path} is not an sslvit tokenizer file (no {TOKENIZER_KEY!r} record)")
    target = str(record["target"])
    if not target.startswith(_ALLOWED_MODULE):
        raise ValueError(f"{path}: tokenizer class {target!r} is not in {_ALLOWED_MODULE}")
    module_name, _, class_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if cls is None:
        raise ValueError(f"{path}: tokenizer class {target!r} does not exist")
    tokenizer = cls(**record.get("config", {}))
    state = payload.get("state_dict", {})
    if any(k.startswith("tokenizer.") for k in state):  # a stage-1 Lightning checkpoint
        state = {k.removeprefix("tokenizer."): v for k, v in state.items() if k.startswith("tokenizer.")}
    try:
        tokenizer.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {class_name}: {str(err).splitlines()[0]}") from err
    return tokenizer


def _from_dalle(payload: dict, path: Path) -> nn.Module:
    state = payload.get("state_dict", payload)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        return DALLETokenizer.from_state_dict(tensors)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is neither an sslvit tokenizer nor a DALL-E encoder: {err}") from err
