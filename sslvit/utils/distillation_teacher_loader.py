"""Building the frozen teacher of ``method=distill`` from the checkpoint of one of our runs."""

from __future__ import annotations

import re

from torch import Tensor

from sslvit.backbones.distillation_teacher import DistillationTeacher
from sslvit.eval.checkpoint_import import import_backbone_state
from sslvit.heads import DINOHead
from sslvit.utils.checkpoint_reader import RUN_CONFIG_KEY, read_checkpoint
from sslvit.utils.feature_teacher_loader import backbone_from_run, is_run_checkpoint

_LINEAR = re.compile(r"^mlp\.(\d+)\.weight$")
_RUNS = "an iBOT or DINOv2 run (or of another distillation)"


def load_distillation_teacher(path: str | None = None) -> DistillationTeacher:
    """The EMA teacher of a DINO-family run, backbone *and* heads, frozen.

    Which heads a checkpoint holds (under ``teacher.``): DINOv2 and distillation runs a ``dino_head`` and
    an ``ibot_head``; iBOT runs a ``head`` shared by CLS and patch tokens, or a ``head`` and a
    ``patch_head``. A DINO run has no patch head and a released backbone file no head at all: both are
    refused, since the targets of the distillation losses are the teacher's own head outputs.

    Args:
        path: ``last.ckpt`` (or any checkpoint) of one of our runs; the backbone is rebuilt from the
            config stored in it.
    """
    if not path:
        raise ValueError(f"method=distill needs a teacher: teacher.path=<last.ckpt of {_RUNS}>")
    source = f"teacher.path={path}"
    checkpoint = read_checkpoint(path, source)
    if not is_run_checkpoint(checkpoint):
        raise ValueError(_not_a_run(checkpoint, source))
    state: dict[str, Tensor] = checkpoint["state_dict"]
    method = checkpoint[RUN_CONFIG_KEY].get("method") or {}
    patch_key: str | None
    if "teacher.dino_head.prototypes" in state:  # DINOv2, distillation
        cls_key, patch_key = "dino_head", "ibot_head"
    elif "teacher.head.prototypes" in state:  # iBOT (shared or separate patch head), DINO
        cls_key = "head"
        patch_key = "patch_head" if "teacher.patch_head.prototypes" in state else None
        if patch_key is None and not method.get("shared_head"):
            raise ValueError(
                f"{source} has a CLS head but no patch head (a DINO run): the iBOT loss needs the "
                f"teacher's patch head; distil from {_RUNS}"
            )
    else:
        target = method.get("_target_", "an unknown method")
        raise ValueError(f"{source} holds no DINO head ({target}): distil from {_RUNS}")

    backbone = backbone_from_run(checkpoint, source)
    embed_dim = int(backbone.embed_dim)  # type: ignore[arg-type]
    dino_head = _head(state, f"teacher.{cls_key}.", embed_dim, source)
    ibot_head = None if patch_key is None else _head(state, f"teacher.{patch_key}.", embed_dim, source)
    return DistillationTeacher(backbone, dino_head, ibot_head)


def _head(state: dict[str, Tensor], prefix: str, in_dim: int, source: str) -> DINOHead:
    """A ``DINOHead`` shaped after, and loaded with, the weights under ``prefix``."""
    weights = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    # (out, in) weights of the MLP's linear layers in order; 1-d ``mlp.<i>.weight`` are batch norms.
    linear = sorted(
        (int(m.group(1)), v) for k, v in weights.items() if (m := _LINEAR.match(k)) and v.ndim == 2
    )
    if not linear or linear[0][1].shape[1] != in_dim:
        raise ValueError(
            f"{source}: the head under {prefix!r} does not read the teacher's {in_dim}-d features"
        )
    use_bn = any(v.ndim == 1 and _LINEAR.match(k) for k, v in weights.items())
    prototypes = weights["prototypes"]  # (K, bottleneck)
    head = DINOHead(
        in_dim,
        prototypes.shape[0],
        hidden_dim=linear[0][1].shape[0] if len(linear) > 1 else prototypes.shape[1],
        bottleneck_dim=prototypes.shape[1],
        nlayers=len(linear),
        use_bn=use_bn,
    )
    try:
        head.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"{source}: the head under {prefix!r} does not load: {str(err).splitlines()[0]}"
        ) from err
    return head


def _not_a_run(checkpoint: dict, source: str) -> str:
    """The message for a file that is not one of our run checkpoints."""
    try:
        layout = import_backbone_state(checkpoint).layout
    except ValueError:
        return f"{source} is not a checkpoint of sslvit's train.py (no {RUN_CONFIG_KEY} with a backbone)"
    return (
        f"{source} is ViT weights ({layout} layout), not a checkpoint of sslvit's train.py with the "
        f"teacher's DINO and iBOT heads, whose outputs are the distillation targets: give the last.ckpt "
        f"of {_RUNS}, e.g. one started from this file with init_from="
    )
