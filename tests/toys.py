"""Shared test helpers: tiny DINO modules and in-memory multi-crop loaders for method tests."""

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sslvit.backbones import MaskedViT
from sslvit.config import register_resolvers
from sslvit.data.batch import MultiCropBatch
from sslvit.methods import DINO, OptimConfig


def tiny_backbone() -> MaskedViT:
    return MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)


def tiny_dino(**optim_overrides) -> DINO:
    optim = OptimConfig(**{"warmup_epochs": 0, "batch_size_per_device": 4, **optim_overrides})
    return DINO(
        tiny_backbone(), optim, out_dim=64, hidden_dim=32, bottleneck_dim=16, warmup_teacher_temp_epochs=1
    )


def multicrop_batches(num_batches: int, batch_size: int = 4, seed: int = 0) -> list[MultiCropBatch]:
    g = torch.Generator().manual_seed(seed)
    return [
        MultiCropBatch(
            global_crops=[torch.randn(batch_size, 3, 16, 16, generator=g) for _ in range(2)],
            local_crops=[torch.randn(batch_size, 3, 8, 8, generator=g) for _ in range(2)],
            labels=torch.randint(0, 3, (batch_size,), generator=g),
        )
        for _ in range(num_batches)
    ]


def loader(batches: list[MultiCropBatch]) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)


CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def build_vit(size: str, **overrides) -> MaskedViT:
    """The MaskedViT of conf/backbone/vit_<size>.yaml (where the sizes are defined), 224 px, patch 16
    unless ``overrides`` (any MaskedViT argument) say otherwise."""
    data = {"transform": {"global_crop_size": 224}}
    backbone = OmegaConf.load(Path(CONF_DIR) / "backbone" / f"vit_{size}.yaml")
    return instantiate(OmegaConf.merge({"data": data}, {"backbone": backbone}).backbone, **overrides)


def vit_size(size: str) -> dict[str, int]:
    """``embed_dim``, ``depth`` and ``num_heads`` of conf/backbone/vit_<size>.yaml."""
    backbone = OmegaConf.load(Path(CONF_DIR) / "backbone" / f"vit_{size}.yaml")
    return {key: int(backbone[key]) for key in ("embed_dim", "depth", "num_heads")}


# Overrides that make any training config tiny: a 2-block ViT on 32-px fake images, small heads.
TINY = [
    "backbone=vit_test",
    "data=fake",
    "backbone.patch_size=8",  # 32-px fake images -> a 4x4 patch grid (16-px local crops: 2x2)
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "method.out_dim=64",
    "method.hidden_dim=32",
    "method.bottleneck_dim=16",
    "data.transform.num_local_crops=2",  # keep multi-crop under test (DINO's Fashion-MNIST values have none)
]


def compose_train_cfg(output_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose conf/config.yaml as `python train.py <overrides>` would, with its output in ``output_dir``."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
