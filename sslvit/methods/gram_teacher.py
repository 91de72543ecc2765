"""The Gram teacher of Gram anchoring: a frozen snapshot of the EMA teacher's backbone, refreshed at times."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

RESIZE_MODES = ("bicubic", "bilinear")


@dataclass
class GramConfig:
    """Gram anchoring settings of DINOv2 (``method.gram.*``; DINOv3, Siméoni et al., 2025, arXiv:2508.10104).

    Weight, refresh interval, Gram-teacher resolution and resize are the official Gram-anchoring stage's
    (facebookresearch/dinov3, ``dinov3/configs/train/dinov3_vit7b16_gram_anchor.yaml``, where the loss
    joins a run after 1M iterations; here ``start_step`` counts from the start of this run). The defaults
    equal conf/method/dinov2.yaml's ``gram:`` node (a test keeps them equal).

    Attributes:
        enabled: add the Gram loss (and hold a Gram teacher); off by default.
        weight: weight of the Gram loss in the total (2.0 in the official refinement stage).
        start_step: the first optimizer step with the Gram loss; the Gram teacher is first snapshotted
            from the EMA teacher at this step.
        refresh_every: the Gram teacher is snapshotted again every this many optimizer steps after
            ``start_step`` (10k in DINOv3).
        teacher_resolution_scale: the Gram teacher sees the global crops upsampled by this factor and its
            patch features are resized back to the student's grid (2.0: DINOv3's high-resolution Gram
            teacher, 512 px crops for a 256 px student; 1.0: the same crops as the student).
        resize_mode: interpolation of those feature maps, ``bicubic`` (official) or ``bilinear``.
        resize_antialias: antialiased downsampling of the feature maps (off in the official config).
    """

    enabled: bool = False
    weight: float = 2.0
    start_step: int = 0
    refresh_every: int = 10000
    teacher_resolution_scale: float = 2.0
    resize_mode: str = "bicubic"
    resize_antialias: bool = False

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if self.start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {self.start_step}")
        if self.refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {self.refresh_every}")
        if self.teacher_resolution_scale <= 0:
            raise ValueError(f"teacher_resolution_scale must be > 0, got {self.teacher_resolution_scale}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")


def resize_patch_tokens(
    tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], mode: str, antialias: bool
) -> torch.Tensor:
    """``(B, h*w, D)`` row-major patch tokens on a ``grid`` of ``(h, w)`` -> ``(B, H*W, D)`` on ``size``."""
    if tuple(grid) == tuple(size):
        return tokens
    maps = tokens.float().transpose(1, 2).unflatten(-1, grid)  # (B, D, h, w)
    maps = F.interpolate(maps, size=size, mode=mode, align_corners=False, antialias=antialias)
    return maps.flatten(-2).transpose(1, 2)  # (B, H*W, D)


class GramTeacher(nn.Module):
    """A frozen copy of the EMA teacher's backbone that anchors the student's patch similarities.

    Snapshotted from the EMA teacher at optimizer step ``start_step`` and every ``refresh_every`` steps
    after it (:meth:`due`), *before* that step's first forward, so that the Gram teacher in use at step
    ``s`` is the EMA teacher as it was at the start of the latest refresh step ``<= s``. The snapshot is
    part of the state dict (``gram_teacher.backbone.*``): a resumed run continues with the very same Gram
    teacher, whatever step it resumes at. No gradient, never in the optimizer, always in eval mode.

    Args:
        backbone: the EMA teacher's backbone (copied; its weights are overwritten at the first refresh).
        config: when to refresh and how the Gram teacher sees the images.
    """

    def __init__(self, backbone: nn.Module, config: GramConfig) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.requires_grad_(False)
        self.eval()
        self.config = config

    def train(self, mode: bool = True) -> GramTeacher:
        return super().train(False)  # no dropout / drop path in the Gram teacher, ever

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` has the Gram loss."""
        return step >= self.config.start_step

    def due(self, step: int) -> bool:
        """Whether the Gram teacher is snapshotted from the EMA teacher before optimizer step ``step``."""
        since = step - self.config.start_step
        return since >= 0 and since % self.config.refresh_every == 0

    @torch.no_grad()
    def refresh(self, source: nn.Module, sharded_root: nn.Module | None = None) -> None:
        """Copy every parameter and buffer of ``source`` (the EMA teacher's backbone) into this snapshot.

        Call it outside the forward pass (the in-place copy must land in the parameters FSDP keeps).

        Args:
            source: the EMA teacher's backbone.
            sharded_root: the FSDP root module when training under FSDP, else None. Each transformer
                block is its own FSDP unit, laid out alike in both backbones, so blocks copy shard to
                shard; the remaining parameters (embeddings, final norm) are slices of the root unit's
                one flat parameter at different offsets, so the root unit's parameters are gathered for
                the copy and written back (an all-gather of the non-block parameters, once per refresh).
        """
        gathered = (
            FullyShardedDataParallel.summon_full_params(sharded_root, recurse=False, writeback=True)
            if sharded_root is not None
            else contextlib.nullcontext()
        )
        with gathered:
            for mine, theirs in (
                (dict(self.backbone.named_parameters()), dict(source.named_parameters())),
                (dict(self.backbone.named_buffers()), dict(source.named_buffers())),
            ):
                if mine.keys() != theirs.keys():
                    raise ValueError(
                        "the Gram teacher and the EMA teacher backbone have different parameters"
                    )
                if mine:
                    torch._foreach_copy_(list(mine.values()), [theirs[name].detach() for name in mine])

    @torch.no_grad()
    def patch_features(self, global_crops: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, C, H, W)`` global crops -> ``(B, h*w, D)`` Gram-teacher patch features on the student's
        ``grid`` (CLS and register tokens left out), after the final norm as the official code takes them.

        With ``teacher_resolution_scale != 1`` the crops are upsampled bicubically to that many times
        the patch grid and the feature map is resized back.
        """
        backbone: Any = self.backbone
        config = self.config
        scale = config.teacher_resolution_scale
        size = (max(1, round(grid[0] * scale)), max(1, round(grid[1] * scale)))
        if size != tuple(grid):
            pixels = (size[0] * backbone.patch_size, size[1] * backbone.patch_size)
            global_crops = F.interpolate(global_crops, size=pixels, mode="bicubic", align_corners=False)
        tokens = backbone.forward_features(global_crops)["x_norm_patchtokens"]  # (B, size[0]*size[1], D)
        return resize_patch_tokens(tokens, size, grid, config.resize_mode, config.resize_antialias)
