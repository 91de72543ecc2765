"""Run a backbone over crops of several resolutions with one forward pass per resolution."""

from __future__ import annotations

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
