"""Tiny instances of every method and fixed batches for them, shared by method and DDP tests.

Every builder seeds torch itself, so two processes building the same method get the same weights. Drop
path is 0 and nothing random happens in a step except the dVAE's Gumbel noise (see ``FixedGumbelNoise``).
Batches are fixed tensors; :func:`shard` cuts a global batch into the per-process batches of DDP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from sslvit.backbones import MaskedViT
from sslvit.backbones.distillation_teacher import DistillationTeacher
from sslvit.backbones.feature_teacher import FeatureTeacher
from sslvit.data.batch import MaskedImageBatch, MultiCropBatch
from sslvit.heads import DINOHead
from sslvit.methods import DINO, IBOT, BEiT, BEiTv2, DINOv2, Distillation, OptimConfig
from sslvit.methods.dvae import DVAETraining
from sslvit.methods.vqkd import VQKDTraining
from sslvit.tokenizers import DVAE

METHODS = ("dino", "ibot", "dinov2", "beit", "beitv2", "dvae", "vqkd", "distill")
IMAGE, PATCH, LOCAL = 16, 4, 8  # 16-px global crops on a 4x4 grid of 4-px patches; 8-px local crops
GRID = (IMAGE // PATCH) ** 2
HEAD = {"out_dim": 32, "hidden_dim": 24, "bottleneck_dim": 8}


def optim(batch_size_per_device: int, **overrides: Any) -> OptimConfig:
    """Warm-up-free AdamW with clipping, so that the first steps already move every weight."""
    values: dict[str, Any] = {
        "base_lr": 1e-3,
        "lr_scaling": "none",
        "warmup_epochs": 0,
        "batch_size_per_device": batch_size_per_device,
        "freeze_last_layer_epochs": 0,
        "clip_grad": 3.0,
        **overrides,
    }
    return OptimConfig(**values)


def backbone(**kwargs: Any) -> MaskedViT:
    return MaskedViT(img_size=IMAGE, patch_size=PATCH, embed_dim=24, depth=2, num_heads=2, **kwargs)


def distillation_teacher() -> DistillationTeacher:
    """A wider frozen teacher (32-d against the student's 24) with its own DINO and iBOT heads."""
    wide = MaskedViT(img_size=IMAGE, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2)
    head_shape = {"hidden_dim": 20, "bottleneck_dim": 6}  # the student's heads have their own shape
    return DistillationTeacher(
        wide, DINOHead(32, HEAD["out_dim"], **head_shape), DINOHead(32, HEAD["out_dim"] // 2, **head_shape)
    )


def tiny_tokenizer() -> DVAE:
    """A 4x-downsampling dVAE: a 16-px view -> the 4x4 patch grid."""
    return DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)


def build(method: str, batch_size_per_device: int, **kwargs: Any) -> Any:
    """A tiny ``method`` (one of :data:`METHODS`) seeded with 0; ``kwargs`` go to the method."""
    torch.manual_seed(0)
    o = optim(batch_size_per_device)
    shared = {"warmup_teacher_temp_epochs": 1, **kwargs}
    if method == "dino":
        return DINO(backbone(), o, **HEAD, **shared)
    if method == "ibot":
        return IBOT(backbone(), o, patch_out_dim=HEAD["out_dim"], **HEAD, **shared)
    if method == "dinov2":
        return DINOv2(backbone(), o, patch_out_dim=HEAD["out_dim"], **HEAD, **shared)
    if method == "distill":
        student_heads = {"hidden_dim": HEAD["hidden_dim"], "bottleneck_dim": HEAD["bottleneck_dim"]}
        return Distillation(backbone(), o, distillation_teacher(), **student_heads, **shared)
    beit_vit = {"rel_pos_bias": True, "layerscale_init": 0.1}
    if method == "beit":
        return BEiT(backbone(**beit_vit), o, tiny_tokenizer(), **kwargs)
    if method == "beitv2":
        return BEiTv2(backbone(**beit_vit), o, tiny_tokenizer(), cls_pretrain_layer=1, **kwargs)
    if method == "dvae":
        return DVAETraining(tiny_tokenizer(), o, temperature_anneal_epochs=1, **kwargs)
    if method == "vqkd":
        teacher = FeatureTeacher(backbone())
        return VQKDTraining(
            backbone(), optim(batch_size_per_device, clip_grad=0.0), teacher, num_codes=8, code_dim=4,
            decoder_depth=1, usage_window=2, pixel_mean=(0.5,) * 3, pixel_std=(0.5,) * 3, **kwargs,
        )  # fmt: skip
    raise ValueError(f"unknown method {method!r}")


def equal_count_masks(rows: int, per_row: int, generator: torch.Generator) -> torch.Tensor:
    """(rows, GRID) bool masks with exactly ``per_row`` masked patches in each row."""
    order = torch.rand(rows, GRID, generator=generator).argsort(dim=1)
    return torch.zeros(rows, GRID, dtype=torch.bool).scatter_(1, order[:, :per_row], True)


def global_batch(method: str, batch_size: int, seed: int) -> MultiCropBatch | MaskedImageBatch:
    """A fixed global batch for ``method``: multi-crop (+ masks) or masked images with a tokenizer view."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(batch_size, dtype=torch.long)
    if method == "dvae":  # pixels in [0, 1], nothing masked
        return MaskedImageBatch(images=torch.rand(batch_size, 3, IMAGE, IMAGE, generator=g), labels=labels)
    if method in ("beit", "beitv2"):
        return MaskedImageBatch(
            images=torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g),
            labels=labels,
            tokenizer_images=torch.rand(batch_size, 3, IMAGE, IMAGE, generator=g),
            # the same count in every image: each process's MIM mean then weighs tokens as one process does
            masks=equal_count_masks(batch_size, 6, g),
        )
    views = 1 if method == "vqkd" else 2
    local_views = 2 if method in ("dino", "ibot", "dinov2", "distill") else 0
    masked = method in ("ibot", "dinov2", "distill")  # distill: the iBOT loss's tokens, nothing masked
    return MultiCropBatch(
        global_crops=[torch.randn(batch_size, 3, IMAGE, IMAGE, generator=g) for _ in range(views)],
        local_crops=[torch.randn(batch_size, 3, LOCAL, LOCAL, generator=g) for _ in range(local_views)],
        labels=labels,
        masks=torch.rand(views * batch_size, GRID, generator=g) < 0.4 if masked else None,
    )


def shard(batch: MultiCropBatch | MaskedImageBatch, rank: int, world: int) -> Any:
    """The contiguous ``rank``-th of ``world`` slices of every image of a global batch (masks view-major)."""
    size = batch.batch_size // world
    rows = slice(rank * size, (rank + 1) * size)
    if isinstance(batch, MaskedImageBatch):
        return MaskedImageBatch(
            images=batch.images[rows],
            labels=batch.labels[rows],
            tokenizer_images=None if batch.tokenizer_images is None else batch.tokenizer_images[rows],
            masks=None if batch.masks is None else batch.masks[rows],
        )
    masks = batch.masks
    if masks is not None:  # (G*B, N), one block of B rows per global view
        masks = torch.cat([view[rows] for view in masks.chunk(len(batch.global_crops))])
    return MultiCropBatch(
        global_crops=[crop[rows] for crop in batch.global_crops],
        local_crops=[crop[rows] for crop in batch.local_crops],
        labels=batch.labels[rows],
        masks=masks,
    )


class FixedGumbelNoise:
    """Replaces ``F.gumbel_softmax`` with one whose noise is read from a fixed tensor.

    The dVAE samples Gumbel noise per image; two processes drawing B/2 images each cannot draw what one
    process draws for B. Setting ``rows`` to the slice of the global noise that this process's images
    own makes the relaxed codes independent of the split.
    """

    def __init__(self, noise: torch.Tensor) -> None:
        self.noise = noise  # (steps, B, K, h, w) standard Gumbel samples
        self.step, self.rows = 0, slice(None)
        self._original: Callable[..., torch.Tensor] | None = None

    def __call__(
        self, logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1
    ) -> torch.Tensor:
        y_soft = ((logits + self.noise[self.step][self.rows]) / tau).softmax(dim)
        if not hard:
            return y_soft
        index = y_soft.argmax(dim, keepdim=True)
        y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
        return y_hard - y_soft.detach() + y_soft

    def __enter__(self) -> FixedGumbelNoise:
        self._original, F.gumbel_softmax = F.gumbel_softmax, self  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        F.gumbel_softmax = self._original  # type: ignore[assignment]
