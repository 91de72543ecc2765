"""Map released BEiT / BEiT v2 pretraining weights onto MaskedViT names (with ``rel_pos_bias=True``).

BEiT (Bao et al., 2022, arXiv:2106.08254) and BEiT v2 (Peng et al., 2022, arXiv:2208.06366) store:

* ``blocks.N.attn.qkv.weight`` without a bias, plus ``blocks.N.attn.q_bias`` and ``v_bias``: the key
  projection has no bias, so ours is ``cat(q_bias, 0, v_bias)``;
* LayerScale as ``blocks.N.gamma_1`` / ``gamma_2`` (timm: ``blocks.N.ls1.gamma`` / ``ls2.gamma``);
* a relative position bias table of ``(2H-1)(2W-1) + 3`` rows x heads, shared
  (``rel_pos_bias.relative_position_bias_table``) or per block
  (``blocks.N.attn.relative_position_bias_table``), with its ``relative_position_index``;
* ``pos_embed`` only when an absolute position embedding is used as well;
* pretraining heads: ``lm_head.*`` (the visual-token classifier) and, in BEiT v2, the CLS-pretraining
  branch ``cls_pt_layers.*`` / ``cls_pt_norm.*``. They are dropped.

Our table (:mod:`sslvit.backbones.rel_pos_bias`) is indexed the same way (offset rows in row-major
``(dy, dx)`` order, then CLS -> patch, patch -> CLS, CLS -> CLS); the stored index is still compared
with ours and the table rows are reordered to whatever it says, so a file with another convention maps
too, and one whose index is not a relabelling of ours is refused.
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from sslvit.backbones.rel_pos_bias import relative_position_index

_DROPPED = ("lm_head.", "cls_pt_", "head.")
_BLOCK_BIAS = re.compile(r"^blocks\.(\d+)\.attn\.relative_position_(bias_table|index)$")
_SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"
_SHARED_INDEX = "rel_pos_bias.relative_position_index"


def is_beit_layout(state: dict[str, Tensor]) -> bool:
    """Whether a bare backbone state dict uses BEiT's names."""
    markers = ("relative_position_bias_table", "gamma_1", "attn.q_bias")
    return any(marker in key for key in state for marker in markers)


def beit_to_masked_vit(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A BEiT / BEiT v2 backbone state dict (keys relative to the backbone) in MaskedViT names.

    Raises:
        ValueError: a layout MaskedViT cannot reproduce (different per-block bias tables, no position
            information at all, no final norm, a non-square patch grid or an unknown bias index).
    """
    out: dict[str, Tensor] = {}
    block_tables: dict[int, Tensor] = {}
    block_indices: dict[int, Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        per_block = _BLOCK_BIAS.match(key)
        if per_block:
            target = block_tables if per_block.group(2) == "bias_table" else block_indices
            target[int(per_block.group(1))] = value
        elif key.endswith(".gamma_1") or key.endswith(".gamma_2"):
            out[key[: -len("gamma_1")] + ("ls1.gamma" if key.endswith("1") else "ls2.gamma")] = value
        elif key.endswith(".attn.q_bias"):
            v_bias = state.get(key.removesuffix("q_bias") + "v_bias")
            if v_bias is None:
                raise ValueError(f"BEiT checkpoint has {key} but no matching v_bias")
            out[key.removesuffix("q_bias") + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
        elif not key.endswith(".attn.v_bias"):
            out[key] = value
    if "norm.weight" not in out:
        raise ValueError(
            "BEiT checkpoint has no final 'norm' (a fine-tuned file?): only pretraining files map"
        )
    table, index = out.pop(_SHARED_TABLE, None), out.pop(_SHARED_INDEX, None)
    if block_tables:
        if table is not None:
            raise ValueError("BEiT checkpoint has both a shared and per-block relative position bias tables")
        table, index = _shared_from_blocks(block_tables, block_indices, len(_block_ids(out)))
    if table is None:
        if "pos_embed" not in out:
            raise ValueError("BEiT checkpoint has neither pos_embed nor a relative position bias table")
        return out
    side = _grid_side(table, index)
    out["rel_pos_bias.table"] = _to_our_order(table, index, side)
    if "pos_embed" not in out:
        # Relative bias only: a zero absolute embedding adds nothing, at any resampled size too.
        cls = out["cls_token"]
        out["pos_embed"] = cls.new_zeros(1, 1 + side * side, cls.shape[-1])
    return out


def _block_ids(state: dict[str, Tensor]) -> set[int]:
    return {int(m.group(1)) for key in state if (m := re.match(r"^blocks\.(\d+)\.", key))}


def _shared_from_blocks(
    tables: dict[int, Tensor], indices: dict[int, Tensor], depth: int
) -> tuple[Tensor, Tensor | None]:
    """The one table of a per-block file whose blocks all hold the same one (else refused)."""
    first = tables[min(tables)]
    if len(tables) != depth or any(not torch.equal(t, first) for t in tables.values()):
        raise ValueError(
            "BEiT checkpoint has a different relative position bias table per block; MaskedViT supports "
            "only one table shared by all blocks"
        )
    return first, indices.get(min(tables))


def _grid_side(table: Tensor, index: Tensor | None) -> int:
    """Side of the square patch grid the ``(2S-1)^2 + 3``-row table was built for."""
    offsets = table.shape[0] - 3
    span = math.isqrt(max(offsets, 0))
    side = (span + 1) // 2
    if span * span != offsets or span % 2 == 0:
        raise ValueError(
            f"relative position bias table of {table.shape[0]} rows does not fit a square patch grid"
        )
    if index is not None and tuple(index.shape) != (1 + side * side,) * 2:
        raise ValueError(
            f"relative_position_index {tuple(index.shape)} does not match the table's {side}x{side} grid"
        )
    return side


def _to_our_order(table: Tensor, index: Tensor | None, side: int) -> Tensor:
    """Reorder table rows so that our index reads, for every token pair, the row the file's index did."""
    ours = relative_position_index((side, side), (side, side), num_prefix=1)
    if index is None or torch.equal(index.long(), ours):
        return table
    theirs = index.long()
    source = torch.full((table.shape[0],), -1, dtype=torch.int64)
    source[ours.reshape(-1)] = theirs.reshape(-1)
    if (source < 0).any() or not torch.equal(source[ours], theirs):
        raise ValueError("relative_position_index of the checkpoint is not a relabelling of MaskedViT's")
    return table[source]
