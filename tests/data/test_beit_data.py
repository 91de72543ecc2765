"""BEiT's data path: two views of one crop, block masks with BEiT's statistics, typed batches."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mask_stats import component_sizes
from omegaconf import OmegaConf
from PIL import Image

from sslvit.data import (
    BEiTTransform,
    EvalTransform,
    FakeDataset,
    MaskedImageBatch,
    SingleCropTransform,
    SSLDataModule,
)
from sslvit.data.masking import MaskGenerator

BEIT_MASKING = Path(__file__).resolve().parents[2] / "conf" / "data" / "masking" / "beit.yaml"


def beit_masks(num_masks, grid, seed=0):
    options = {
        k: v for k, v in OmegaConf.to_container(OmegaConf.load(BEIT_MASKING)).items() if k != "_target_"
    }
    return MaskGenerator(**{**options, "seed": seed})(num_masks, grid)


def test_tokenizer_view_is_the_same_crop_at_the_grid_resolution():
    # A vertical edge: whatever crop and flip are drawn, both views must put it at the same place.
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 40:] = 255
    image = Image.fromarray(pixels)
    transform = BEiTTransform(
        32,
        patch_size=4,
        tokenizer_downsample=2,
        global_crop_scale=(0.2, 1.0),
        mean=(0, 0, 0),
        std=(1, 1, 1),
        color_jitter_p=0.0,
    )
    assert transform.tokenizer_crop_size == 16  # 32 / 4 = 8 patches per side, 2 px per token
    torch.manual_seed(0)
    for _ in range(20):
        vit, tok = transform(image)
        assert vit.shape == (3, 32, 32) and tok.shape == (3, 16, 16)
        assert tok.min() >= 0.0 and tok.max() <= 1.0
        vit_columns = vit[0].mean(dim=0).view(16, 2).mean(dim=1)  # brightness per tokenizer column
        assert torch.allclose(vit_columns, tok[0].mean(dim=0), atol=0.15)
    # the paper's setting: ViT/16 at 224 px with DALL-E's 8x tokenizer -> 112 px
    assert BEiTTransform(224, patch_size=16, tokenizer_downsample=8).tokenizer_crop_size == 112


def test_multicrop_options_of_data_configs_are_ignored_but_typos_are_not():
    BEiTTransform(28, 4, 4, local_crop_size=14, num_local_crops=4, blur_p=[0.1, 0.1, 0.1], solarize_p=0.0)
    with pytest.raises(TypeError, match="global_crop_scael"):
        BEiTTransform(28, 4, 4, global_crop_scael=(0.5, 1.0))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        BEiTTransform(30, 4, 4)


def test_beit_masks_have_the_paper_statistics():
    masks = beit_masks(400, (14, 14))
    counts = masks.sum(dim=1)
    # 75 of 196 at most; overshooting blocks are rejected, so about a third end a patch or two short
    assert counts.max() == 75 and (counts == 75).float().mean() > 0.5 and counts.float().mean() > 73
    largest = []
    for mask in masks.view(-1, 14, 14).numpy():
        sizes = component_sizes(mask)
        largest.append(max(sizes))
        assert len(sizes) <= 6  # a few whole blocks, not scattered patches
    # blocks are drawn with >= 16 patches (rounding to whole rows / columns can shave a few)
    assert min(largest) >= 12 and np.mean(largest) >= 30
    per_position = masks.float().mean(dim=0)
    # every position is masked sometimes (blocks cover the centre more often than the corners)
    assert per_position.mean().item() == pytest.approx(counts.float().mean().item() / 196, abs=1e-6)
    assert per_position.min() > 0.02
    # 7x7 grids (ViT/4 at 28 px): the same ratio gives at most 18 of 49, still in blocks
    small = beit_masks(100, (7, 7)).sum(dim=1)
    assert small.max() == 18 and small.min() >= 12


def test_datamodule_builds_masked_image_batches():
    dm = SSLDataModule(
        train_set=FakeDataset(32, 32, 4, seed=0),
        transform=BEiTTransform(32, patch_size=8, tokenizer_downsample=4, mean=(0.5,) * 3, std=(0.5,) * 3),
        batch_size=8,
        num_workers=0,
        patch_size=8,
        masking=MaskGenerator(ratio_min=0.4, ratio_max=0.4, min_num_patches=4, exact_count=True, seed=0),
        eval_train_set=FakeDataset(16, 32, 4, seed=0),
        eval_val_set=FakeDataset(16, 32, 4, seed=1),
        eval_transform=EvalTransform(32, mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert isinstance(batch, MaskedImageBatch) and batch.batch_size == 8
    assert batch.images.shape == (8, 3, 32, 32) and batch.tokenizer_images.shape == (8, 3, 16, 16)
    assert batch.masks.shape == (8, 16) and (batch.masks.sum(dim=1) == 6).all()  # floor(0.4 x 16)
    assert batch.global_crops[0] is batch.images  # what the online linear probe reads
    pickle.dumps(loader.collate_fn)  # workers need it

    plain = SSLDataModule(
        FakeDataset(16, 32, 4), SingleCropTransform(32), batch_size=4, num_workers=0, patch_size=8
    )
    batch = next(iter(plain.train_dataloader()))
    assert batch.images.shape == (4, 3, 32, 32) and batch.masks is None and batch.tokenizer_images is None
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0  # dVAE targets: [0, 1] pixels
