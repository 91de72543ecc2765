"""Import ViT backbone weights from released DINO, iBOT, DINOv2 and BEiT (v2) checkpoints (and from our own).

Layouts recognised (after unwrapping ``state_dict`` / ``teacher`` / ``student`` / ``model`` containers and
``module.`` / ``backbone.`` / ``teacher.backbone.`` style prefixes; the teacher is preferred):

* ``dino`` -- Caron et al., 2021 (arXiv:2104.14294); also timm's ViT and our ``eval=export`` files:
  ``cls_token, pos_embed (1, 1+N, D), patch_embed.proj.*, blocks.N.{norm1, attn.qkv, attn.proj, norm2,
  mlp.fc1, mlp.fc2}.*, norm.*``. These are already our names; no mask token is stored.
* ``ibot`` -- Zhou et al., 2022 (arXiv:2111.07832): the DINO keys plus ``masked_embed (1, D)``.
* ``dinov2`` -- Oquab et al., 2024 (arXiv:2304.07193), with registers (Darcet et al., arXiv:2309.16588):
  ``mask_token (1, D)``, optional ``register_tokens (1, R, D)``, ``blocks.N.ls1.gamma / ls2.gamma``,
  blocks possibly chunked as ``blocks.<chunk>.<N>.*``. DINOv2 adds position embeddings to CLS and
  patches only and inserts the registers afterwards; we store a position entry for every prefix token,
  so the register entries are zeros, which gives the same tokens.
* ``beit`` / ``beitv2`` -- Bao et al., 2022 (arXiv:2106.08254) / Peng et al., 2022 (arXiv:2208.06366)
  pretraining files: ``q_bias`` / ``v_bias``, ``gamma_1`` / ``gamma_2`` and a relative position bias table
  (shared, or per block when every block holds the same one); mapped by :mod:`sslvit.eval.beit_release`
  onto our shared ``rel_pos_bias``, with a zero ``pos_embed`` when the file has none. The MIM
  classifier and BEiT v2's CLS-pretraining branch are dropped.
* ``sslvit`` -- our own MaskedViT keys: timm's names with ``reg_token``, a ``mask_token (1, 1, D)``
  and / or our shared relative position bias ``rel_pos_bias.table`` (also an ``eval=export`` file of a
  backbone with registers).

Per-block BEiT tables that differ between blocks (fine-tuned files) are refused with a clear error, as
are SwiGLU blocks (DINOv2 ViT-g).

Features match the source model exactly at the checkpoint's native resolution; at other resolutions the
position embedding is resampled by timm, whose bicubic resampling differs slightly from DINOv2's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sslvit.eval.beit_release import beit_to_masked_vit, is_beit_layout
from sslvit.utils.checkpoint_reader import read_checkpoint

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_WRAPPERS = ("teacher", "state_dict", "model", "student", "module")


@dataclass
class ImportedBackbone:
    """A backbone state dict in MaskedViT names plus what the weights say about the architecture.

    Attributes:
        layout: detected source layout (``dino``, ``ibot``, ``dinov2``, ``beit``, ``beitv2`` or ``sslvit``).
        state: MaskedViT state dict; ``mask_token`` is absent when the source has none.
        arch: MaskedViT keyword arguments read off the weights (``num_heads`` only from a relative
            position bias table; otherwise it defaults to ``embed_dim // 64``, the head width of every
            DINO / iBOT / DINOv2 release; ``img_size`` is None when the position grid is not square).
        prefix: key prefix the backbone was found under in the source.
    """

    layout: str
    state: dict[str, Tensor]
    arch: dict[str, Any] = field(default_factory=dict)
    prefix: str = ""


def load_any_checkpoint(path: str | Path, source: str | None = None) -> dict[str, Any]:
    """Our checkpoints, exported files and releases (``.pth`` / ``.safetensors``) as plain data, through
    the one reader :func:`~sslvit.utils.checkpoint_reader.read_checkpoint` (no code runs; stored
    configs checked).

    Args:
        path: the file.
        source: how the user named it (``init_from=<path>``), for messages.
    """
    return read_checkpoint(path, source)


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    """All tensors of nested containers, keyed ``<container>.<key>`` (``teacher.backbone.cls_token``)."""
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, Tensor):
            out[prefix + key] = value
        elif isinstance(value, dict) and (prefix or key in _WRAPPERS):
            out.update(_flatten(value, f"{prefix}{key}."))
    return out


def _backbone_prefix(flat: dict[str, Tensor]) -> str:
    """The prefix in front of the evaluation backbone's ``cls_token``.

    Our checkpoints: the teacher backbone when it is an EMA copy of the student's (same keys and
    shapes; better features, DINO section 5.2), else the student backbone (the teacher is then a frozen
    tokenizer or feature teacher, not the trained network). Other files: a bare backbone or one named
    ``*backbone.`` first, then the teacher's over the student's, then the shortest prefix.
    """
    prefixes = [k.removesuffix("cls_token") for k in flat if k == "cls_token" or k.endswith(".cls_token")]
    if not prefixes:
        raise ValueError("no ViT backbone found in the checkpoint (no '*cls_token' key)")
    for student in prefixes:
        if student == "student.backbone." or student.endswith(".student.backbone."):
            teacher = student.removesuffix("student.backbone.") + "teacher.backbone."
            return teacher if _mirrors(flat, teacher, student) else student
    return min(prefixes, key=lambda p: (not (p == "" or p.endswith("backbone.")), "teacher" not in p, len(p)))


def _mirrors(flat: dict[str, Tensor], a: str, b: str) -> bool:
    """Whether the tensors under prefixes ``a`` and ``b`` have the same relative names and shapes."""
    under_a = {k[len(a) :]: v.shape for k, v in flat.items() if k.startswith(a)}
    under_b = {k[len(b) :]: v.shape for k, v in flat.items() if k.startswith(b)}
    return bool(under_a) and under_a == under_b


def detect_layout(state: dict[str, Tensor]) -> str:
    """Name the layout of a bare backbone state dict (keys relative to the backbone)."""
    # Our own shared bias is named "rel_pos_bias.table", none of BEiT's names: ours import as "sslvit".
    if is_beit_layout(state):
        return "beitv2" if any(key.startswith("cls_pt_") for key in state) else "beit"
    if any(".mlp.w12." in key for key in state):
        raise ValueError("SwiGLU feed-forward blocks (DINOv2 ViT-g) are not supported by MaskedViT")
    mask = state.get("mask_token")
    if "register_tokens" in state or (mask is not None and mask.ndim == 2):
        return "dinov2"
    if any(_CHUNKED_BLOCK.match(key) for key in state):
        return "dinov2"
    if "masked_embed" in state:
        return "ibot"
    if "reg_token" in state or "rel_pos_bias.table" in state or (mask is not None and mask.ndim == 3):
        return "sslvit"
    for key in ("pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        if key not in state:
            raise ValueError(f"unrecognised backbone layout: no {key!r} next to cls_token")
    return "dino"


def _to_masked_vit(layout: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    if layout in ("beit", "beitv2"):
        return beit_to_masked_vit(state)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("head.") or key == "head":
            continue  # DINO / DINOv2 keep an identity or a classifier here; not part of the backbone
        chunked = _CHUNKED_BLOCK.match(key)
        if chunked:  # blocks.<chunk>.<global index>.* -> blocks.<global index>.*
            key = f"blocks.{chunked.group(2)}." + key[chunked.end() :]
        out[key] = value
    if layout == "ibot":
        out["mask_token"] = out.pop("masked_embed").reshape(1, 1, -1)
    if layout == "dinov2":
        if "mask_token" in out:
            out["mask_token"] = out["mask_token"].reshape(1, 1, -1)
        registers = out.pop("register_tokens", None)
        if registers is not None:
            out["reg_token"] = registers
            pos = out["pos_embed"]  # (1, 1 + N, D): CLS and patches only
            zeros = pos.new_zeros(1, registers.shape[1], pos.shape[2])
            out["pos_embed"] = torch.cat([pos[:, :1], zeros, pos[:, 1:]], dim=1)
    return out


def infer_arch(state: dict[str, Tensor]) -> dict[str, Any]:
    """MaskedViT keyword arguments implied by a MaskedViT-named state dict."""
    weight = state["patch_embed.proj.weight"]  # (D, C, p, p)
    embed_dim, in_chans, patch_size = weight.shape[0], weight.shape[1], weight.shape[-1]
    depth = 1 + max(int(m.group(1)) for key in state if (m := _BLOCK.match(key)))
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    grid = state["pos_embed"].shape[1] - 1 - registers
    side = math.isqrt(grid)
    layerscale = state.get("blocks.0.ls1.gamma")
    table = state.get("rel_pos_bias.table")  # (rows, heads): the one place the head count is stored
    return {
        # A non-square grid does not tell its sides apart: None, and the caller must give img_size.
        "img_size": side * patch_size if side * side == grid else None,
        "patch_size": patch_size,
        "in_chans": in_chans,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": max(1, embed_dim // 64) if table is None else table.shape[1],
        "mlp_ratio": state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "num_register_tokens": registers,
        # The trained gammas overwrite this value; only "present or not" matters for the build.
        "layerscale_init": None if layerscale is None else 1e-5,
        **({"rel_pos_bias": True} if table is not None else {}),
    }


def import_backbone_state(checkpoint: dict[str, Any]) -> ImportedBackbone:
    """Find the (teacher) ViT backbone in a loaded checkpoint and return it in MaskedViT names."""
    flat = _flatten(checkpoint)
    prefix = _backbone_prefix(flat)
    bare = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    layout = detect_layout(bare)
    state = _to_masked_vit(layout, bare)
    return ImportedBackbone(layout=layout, state=state, arch=infer_arch(state), prefix=prefix)


def complete_for(backbone: nn.Module, imported: ImportedBackbone) -> dict[str, Tensor]:
    """``imported.state`` with the keys the source cannot have filled from ``backbone``'s own values.

    Only ``mask_token`` qualifies (DINO checkpoints have none; the backbone's zero init stands in).
    """
    state = dict(imported.state)
    own = backbone.state_dict()
    if "mask_token" in own and "mask_token" not in state:
        state["mask_token"] = own["mask_token"].clone()
    return state
