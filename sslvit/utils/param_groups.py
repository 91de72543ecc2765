"""Optimizer parameter groups: weight-decay exemptions, layer-wise lr decay, patch-embed lr multiplier."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    no_weight_decay: Callable[[str, nn.Parameter], bool],
    layer_id: Callable[[str], int] | None = None,
    num_layers: int = 0,
    layer_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
) -> list[dict]:
    """Split trainable parameters into AdamW groups carrying ``lr_scale`` and ``apply_wd``.

    The schedules later set ``lr = base_lr * lr_scale`` and ``weight_decay = wd if apply_wd else 0`` in
    each group, so one optimizer serves every schedule.

    Args:
        named_parameters: (name, parameter) pairs; frozen ones are skipped.
        no_weight_decay: predicate for parameters exempt from weight decay (biases, norms, tokens,
            position embeddings).
        layer_id: maps a name to its depth (0 = embeddings, i + 1 = block i, ``num_layers + 1`` = final
            norm and heads). Needed only for ``layer_decay != 1``.
        num_layers: backbone depth.
        layer_decay: layer-wise lr decay; depth d gets ``layer_decay ** (num_layers + 1 - d)``
            (BEiT fine-tuning 0.65; DINOv2 pretraining 0.9).
        patch_embed_lr_mult: extra lr factor on the patch embedding (DINOv2: 0.2).
    """
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        scale = 1.0
        if layer_decay != 1.0:
            if layer_id is None:
                raise ValueError("layer_decay != 1 needs a layer_id function")
            scale = layer_decay ** (num_layers + 1 - layer_id(name))
        if "patch_embed" in name:
            scale *= patch_embed_lr_mult
        apply_wd = not no_weight_decay(name, param)
        group = groups.setdefault(
            (scale, apply_wd), {"params": [], "names": [], "lr_scale": scale, "apply_wd": apply_wd}
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())
