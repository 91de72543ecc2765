"""Helpers for Lightning's FSDPStrategy that a Hydra config can name (``conf/trainer/fsdp.yaml``)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn


def module_classes(names: Sequence[str]) -> set[type[nn.Module]]:
    """Resolve dotted class paths (e.g. ``timm.models.vision_transformer.Block``) to a set of classes.

    Lightning's ``FSDPStrategy(auto_wrap_policy=...)`` takes such a set and wraps every instance of
    those classes in its own FSDP unit (a ``ModuleWrapPolicy``): one unit per transformer block keeps
    only one block's full parameters in memory at a time, which is what makes sharding pay off.

    Raises:
        ValueError: a name that does not resolve to an ``nn.Module`` subclass.
    """
    classes: set[type[nn.Module]] = set()
    for name in names:
        module_name, _, class_name = str(name).rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"FSDP wrap class {name!r} cannot be imported: {err}") from err
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"FSDP wrap class {name!r} is not a torch.nn.Module subclass")
        classes.add(cls)
    return classes


# Prefixes that wrappers insert into parameter names: FSDP units, activation checkpointing, torch.compile.
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def unwrapped_name(name: str) -> str:
    """A parameter name as the unwrapped model spells it.

    ``blocks.0._fsdp_wrapped_module.attn.qkv.weight`` -> ``blocks.0.attn.qkv.weight``.
    """
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def consolidate_sharded_checkpoint(folder: str | Path, output_file: str | Path | None = None) -> Path:
    """Merge a sharded FSDP checkpoint folder into one ordinary checkpoint file (for ``init_from=``,
    ``eval.py`` and export); the same as ``python -m lightning.pytorch.utilities.consolidate_checkpoint``.

    Runs in one process on the CPU, no GPUs or process group needed.

    Args:
        folder: a checkpoint written with ``trainer=fsdp`` (``state_dict_type: sharded``): a folder with
            one file per rank and ``meta.pt``.
        output_file: where to write; default ``<folder>.consolidated`` next to it.

    Returns:
        The path of the written file.
    """
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    from sslvit.utils.atomic_write import atomic_torch_save

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a sharded checkpoint folder")
    output = Path(output_file) if output_file is not None else folder.with_name(folder.name + ".consolidated")
    atomic_torch_save(_format_checkpoint(_load_distributed_checkpoint(folder)), output)
    return output


def mixed_precision(
    param_dtype: str = "bfloat16", reduce_dtype: str = "float32", buffer_dtype: str = "float32"
) -> Any:
    """FSDP ``MixedPrecision`` from dtype names (a config cannot spell ``torch.bfloat16``).

    The default computes in bf16 but all-reduces gradients and keeps buffers in fp32: Lightning's own
    ``bf16-mixed`` setting for FSDP would also cast buffers (the DINO / iBOT centers, updated by a
    running mean every step) and the gradient reduction to bf16, which loses their small increments.
    """
    from torch.distributed.fsdp import MixedPrecision

    def dtype(name: str) -> torch.dtype:
        value = getattr(torch, name, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown torch dtype {name!r}")
        return value

    return MixedPrecision(
        param_dtype=dtype(param_dtype), reduce_dtype=dtype(reduce_dtype), buffer_dtype=dtype(buffer_dtype)
    )


def sharded_root(trainer: Any) -> nn.Module | None:
    """The FSDP root module of a Lightning trainer training under ``FSDPStrategy``, else None.

    Code that pairs student and teacher parameters by name (the EMA update, the Gram teacher refresh)
    needs it to gather the root unit, whose flat parameter holds both networks' unwrapped parameters.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    return strategy.model if isinstance(strategy, FSDPStrategy) else None
