"""conf/backbone/*.yaml compose with a data config and instantiate the right MaskedViT."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sslvit.backbones import MaskedViT

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def compose(name: str, **data_extra: object):
    data = {"transform": {"global_crop_size": 28}, **data_extra}
    return OmegaConf.merge({"data": data}, {"backbone": OmegaConf.load(CONF / f"{name}.yaml")})


# DeiT (tiny, small) and ViT (base, large) widths, as DINO, iBOT, BEiT and DINOv2 use them; "test" is ours.
SIZES = {
    "test": (48, 2, 2),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_config_sizes_are_the_published_ones(size: str) -> None:
    cfg = compose(f"vit_{size}")
    assert cfg.backbone._target_ == "sslvit.backbones.MaskedViT"
    assert (cfg.backbone.embed_dim, cfg.backbone.depth, cfg.backbone.num_heads) == SIZES[size]
    assert cfg.backbone.patch_size == 16 and cfg.backbone.img_size == 28 and cfg.backbone.in_chans == 3
    assert cfg.backbone.num_register_tokens == 0 and cfg.backbone.layerscale_init is None


def test_instantiate_test_backbone_with_overrides() -> None:
    cfg = compose("vit_test", in_chans=1)
    cfg.merge_with_dotlist(
        ["backbone.patch_size=4", "backbone.num_register_tokens=4", "backbone.layerscale_init=1e-5"]
    )
    vit = instantiate(cfg.backbone)
    assert isinstance(vit, MaskedViT)
    assert vit.num_register_tokens == 4 and vit.patch_size == 4
    assert vit.patch_embed.proj.in_channels == 1
    assert vit.pos_embed.shape == (1, 1 + 4 + 49, SIZES["test"][0])
