"""Run a backbone over crops of several resolutions with one forward pass per resolution."""

from __future__ import annotations

from typing import Any

import torch


def cat_by_resolution(crops: list[torch.Tensor]) -> list[torch.Tensor]:
    """Concatenate consecutive crops of equal size: [g1, g2, l1..l6] -> [cat(g1, g2), cat(l1..l6)].

    One large batch per resolution runs much faster than one small batch per crop, and the order of
    rows is kept, so ``torch.cat(outputs).chunk(len(crops))`` recovers one tensor per crop.
    """
    groups: list[list[torch.Tensor]] = []
    for crop in crops:
        if groups and groups[-1][-1].shape[-2:] == crop.shape[-2:]:
            groups[-1].append(crop)
        else:
            groups.append([crop])
    return [torch.cat(group) if len(group) > 1 else group[0] for group in groups]


def student_crop_features(
    backbone: Any, globals_: torch.Tensor, masks: torch.Tensor | None, local_crops: list[torch.Tensor]
) -> tuple[dict[str, Any], torch.Tensor]:
    """The student's ``forward_features`` of the (masked) global crops and the CLS tokens of every crop.

    Global and local crops go to the backbone in one ``forward_features_list`` call, which packs them
    into one pass when the backbone's ``pack_crops`` is on.

    Returns:
        The global crops' output dict and the CLS tokens ``(S * B, D)``, globals first then locals.
    """
    crops = [globals_, torch.cat(local_crops)] if local_crops else [globals_]
    global_out, *local_outs = backbone.forward_features_list(crops, [masks, None][: len(crops)])
    cls = [global_out["x_norm_clstoken"]] + [out["x_norm_clstoken"] for out in local_outs]
    return global_out, torch.cat(cls)
