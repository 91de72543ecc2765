"""Build a method, its optimizer and a synthetic multi-crop batch from the real Hydra configs."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from sslvit.config import register_resolvers
from sslvit.data.batch import MultiCropBatch
from sslvit.utils.masked_tokens import true_indices

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PRECISIONS = {"bf16-mixed": "bf16-mixed", "32": "32-true", "32-true": "32-true"}
ARCH_NAMES = {"vit_test": "ViT-test", "vit_tiny": "ViT-Ti", "vit_small": "ViT-S", "vit_base": "ViT-B"}


@dataclass
class RunSpec:
    """One benchmark row: what to build and which speed switches are on."""

    method: str = "dinov2"
    arch: str = "vit_small"
    patch: int = 14
    global_size: int = 224
    local_size: int = 98
    num_local: int = 8
    batch: int = 128
    precision: str = "bf16-mixed"
    compile: bool = False
    fused_adamw: bool = True
    sdpa: bool = True
    group_crops: bool = True
    pack_crops: bool = False
    mode: str = "step"
    warmup: int = 10
    steps: int = 40
    overrides: list[str] = field(default_factory=list)
    label: str = ""


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The command-line flags that say what to build (method, backbone, crops, batch, packing, overrides),
    shared by the step and memory benchmarks; they fill the fields of :class:`RunSpec` of the same names."""
    p.add_argument("--method", default="dinov2", choices=["dino", "ibot", "dinov2"])
    p.add_argument("--arch", default="vit_small", choices=sorted(ARCH_NAMES))
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=98)
    p.add_argument("--num-local", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pack-crops", action="store_true", help="backbone.pack_crops=true: one packed pass")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="Hydra override")


def spec_from_arguments(args: argparse.Namespace) -> RunSpec:
    """The :class:`RunSpec` that the flags of :func:`add_run_arguments` describe (other fields default)."""
    return RunSpec(
        method=args.method, arch=args.arch, patch=args.patch, global_size=args.global_size,
        local_size=args.local_size, num_local=args.num_local, batch=args.batch, pack_crops=args.pack_crops,
        overrides=list(args.override),
    )  # fmt: skip


def compose_cfg(spec: RunSpec, device: torch.device) -> DictConfig:
    """conf/config.yaml composed as ``train.py`` would, with the benchmark protocol as overrides."""
    if spec.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {spec.precision!r}")
    overrides = [
        f"method={spec.method}",
        f"backbone={spec.arch}",
        "data=fake",
        "logger=none",
        "callbacks=none",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        f"trainer.precision={PRECISIONS[spec.precision]}",
        f"backbone.patch_size={spec.patch}",
        f"data.batch_size={spec.batch}",
        f"data.transform.global_crop_size={spec.global_size}",
        f"data.transform.local_crop_size={spec.local_size}",
        f"data.transform.num_local_crops={spec.num_local}",
        f"backbone.compile_blocks={spec.compile}",
        f"backbone.fused_attn={spec.sdpa}",
        f"backbone.pack_crops={spec.pack_crops}",
        f"method.optim.fused={spec.fused_adamw}",
        # A benchmark run of 50 steps is all "first epoch", where the prototypes are frozen and AdamW
        # skips them; time the steady state that training spends its time in.
        "method.optim.freeze_last_layer_epochs=0",
    ]
    if spec.method == "dinov2":  # the benchmark protocol's DINOv2 setting, stated explicitly
        overrides += ["method.out_dim=65536", "method.patch_out_dim=65536", "method.koleo_weight=0.1"]
        overrides += ["data.masking.mask_probability=0.5", "data.masking.ratio_min=0.1"]
        overrides += ["data.masking.ratio_max=0.5"]
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides + list(spec.overrides))


def build_method(cfg: DictConfig, device: torch.device) -> Any:
    """Backbone and method exactly as ``sslvit.train.train`` instantiates them, moved to ``device``."""
    backbone = instantiate(cfg.backbone)
    return instantiate(cfg.method, backbone=backbone).to(device)


def synthetic_batch(cfg: DictConfig, device: torch.device, seed: int = 0) -> MultiCropBatch:
    """Random crops of the configured sizes, with masks from the configured MaskGenerator (if any).

    Built once, before timing: masks come from the data pipeline, never from the step (docs/benchmarks.md).
    """
    g = torch.Generator().manual_seed(seed)
    t, b = cfg.data.transform, int(cfg.data.batch_size)
    num_global = int(t.get("num_global_crops", 2))

    def crops(n: int, size: int) -> list[torch.Tensor]:
        return [torch.randn(b, 3, size, size, generator=g).to(device) for _ in range(n)]

    masks = mask_indices = None
    if cfg.data.get("masking") is not None:
        generator = instantiate(cfg.data.masking, seed=seed)
        grid = int(t.global_crop_size) // int(cfg.backbone.patch_size)
        cpu_masks = torch.as_tensor(generator(num_global * b, (grid, grid)))
        # As the loader's collate does: the masked positions are found on the CPU, not in the step.
        masks, mask_indices = cpu_masks.to(device), true_indices(cpu_masks).to(device)
    return MultiCropBatch(
        global_crops=crops(num_global, int(t.global_crop_size)),
        local_crops=crops(int(t.num_local_crops), int(t.local_crop_size)),
        labels=torch.zeros(b, dtype=torch.int64, device=device),
        masks=masks,
        mask_indices=mask_indices,
    )
