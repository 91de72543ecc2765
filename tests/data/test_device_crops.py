"""device_stage=crops: boxes drawn in the workers, crops cut on the device equal torchvision's PIL crops."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from sslvit.data.batch import CropSourceBatch, MultiCropBatch
from sslvit.data.transforms import MultiCropTransform
from sslvit.data.transforms.crop_plan import CropPlan
from sslvit.data.transforms.device_crops import crop_resize, crop_sources, resample_weights


def photo(height: int, width: int, seed: int) -> Image.Image:
    """A picture with edges and texture: smooth colour fields plus sharp-edged blocks and noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=torch.Generator().manual_seed(seed)) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")[0]
    pixels = smooth.permute(1, 2, 0).numpy()
    pixels[height // 3 : height // 2, width // 4 : width // 2] = (250, 10, 30)
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def plan(**kwargs) -> CropPlan:
    args = dict(
        global_crop_size=32, local_crop_size=12, num_global_crops=2, num_local_crops=3,
        global_crop_scale=(0.4, 1.0), local_crop_scale=(0.05, 0.4), flip_p=0.5, max_side=80,
    )  # fmt: skip
    return CropPlan(**{**args, **kwargs})


def pillow_goes_vertical_first(width: int, height: int, out: int) -> bool:
    """Pillow >= 13 resamples vertically first when the height shrinks over twice as much as the width
    (src/libImaging/Resample.c); we, like earlier Pillows, always go horizontally first."""
    return int(PIL.__version__.split(".")[0]) >= 13 and height - out > 0 and height - out > 2 * (width - out)


def compare(crop: torch.Tensor, picture: Image.Image, box: tuple[int, ...], size: int, flip: bool) -> None:
    left, top, width, height = box
    reference = TF.resized_crop(picture, top, left, height, width, [size, size], TF.InterpolationMode.BICUBIC)
    if flip:
        reference = TF.hflip(reference)
    diff = (crop.int() - TF.pil_to_tensor(reference).int()).abs()
    if pillow_goes_vertical_first(width, height, size):
        # Same filters; only the 8-bit rounding / clipping between the passes differs (at sharp edges).
        assert diff.max() <= 10 and diff.float().mean() < 0.5, (box, size, diff.max())
    else:  # the same passes in the same order: equal up to PIL's fixed-point weights
        assert diff.max() <= 1 and diff.float().mean() < 0.05, (box, size, diff.max())


def test_device_crops_match_torchvision_resized_crop_on_pil() -> None:
    torch.manual_seed(0)
    pictures = [photo(70, 80, 0), photo(45, 60, 1), photo(80, 33, 2)]  # different sizes share a canvas
    planner = plan()
    batch = planner.collate([(planner(p), -1) for p in pictures])
    assert batch.images.shape == (3, 3, 80, 80)
    views = ((batch.global_boxes, batch.global_flips, 32), (batch.local_boxes, batch.local_flips, 12))
    for boxes, flips, size in views:
        crops = crop_resize(batch.images, boxes, flips, size)
        assert len(crops) == boxes.shape[0]
        for view, crop in enumerate(crops):
            assert crop.dtype == torch.uint8 and crop.shape == (3, 3, size, size)
            for i, picture in enumerate(pictures):
                box = tuple(int(v) for v in boxes[view, i])
                compare(crop[i], picture, box, size, bool(flips[view, i]))


def test_many_boxes_and_upsampling_crops_match_too() -> None:
    picture = photo(90, 90, 5)
    pixels = TF.pil_to_tensor(picture)[None]
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        left, top = (int(v) for v in torch.randint(0, 40, (2,), generator=generator))
        width, height = (int(v) for v in torch.randint(6, 50, (2,), generator=generator))  # some upsample
        size = int(torch.randint(8, 40, (1,), generator=generator))
        boxes = torch.tensor([[[float(left), float(top), float(width), float(height)]]])
        (crop,) = crop_resize(pixels, boxes, torch.tensor([[False]]), size)
        compare(crop[0], picture, (left, top, width, height), size, flip=False)


def test_resample_weights_stay_inside_the_box_and_sum_to_one() -> None:
    weights = resample_weights(torch.tensor([3.0, 0.0]), torch.tensor([20.0, 4.0]), 8, 30)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 8))
    assert weights[0, :, :3].abs().max() == 0 and weights[0, :, 23:].abs().max() == 0
    assert weights[1, :, 4:].abs().max() == 0


def test_plan_shrinks_large_images_and_draws_boxes_in_range() -> None:
    torch.manual_seed(0)
    planner = plan(max_side=50)
    pixels, boxes, flips = planner(photo(60, 100, 0))
    assert pixels.shape == (3, 30, 50) and pixels.dtype == torch.uint8  # long side 100 -> 50, aspect kept
    assert boxes.shape == (5, 4) and flips.shape == (5,) and flips.dtype == torch.bool
    left, top, width, height = boxes.unbind(1)
    assert (
        (left >= 0).all() and (top >= 0).all() and (left + width <= 50).all() and (top + height <= 30).all()
    )
    area = width * height / (30 * 50)
    assert (area[:2] >= 0.4 - 0.02).all() and (area[2:] <= 0.4 + 0.02).all()  # global, local scale ranges
    small, _, _ = planner(photo(20, 24, 1))
    assert small.shape == (3, 20, 24)  # never enlarged
    with pytest.raises(ValueError, match="max_side 16 is smaller than the global crop size 32"):
        plan(max_side=16)


def test_flip_share_and_collate_drops_unreadable_samples_and_draws_masks() -> None:
    torch.manual_seed(0)
    planner = plan(flip_p=0.5)
    flips = torch.stack([planner(photo(40, 40, 0))[2] for _ in range(200)])
    assert 0.4 < flips.float().mean() < 0.6
    samples = [(planner(photo(40, 40, s)), s) for s in range(3)]
    calls = []

    def mask_fn(n: int, grid: tuple[int, int]) -> torch.Tensor:
        calls.append((n, grid))
        return torch.zeros(n, grid[0] * grid[1], dtype=torch.bool)

    batch = planner.collate([samples[0], None, samples[1], samples[2]], mask_fn=mask_fn, patch_size=8)
    assert isinstance(batch, CropSourceBatch) and batch.num_skipped == 1 and batch.batch_size == 3
    assert batch.labels.tolist() == [0, 1, 2]
    assert calls == [(6, (4, 4))] and batch.masks.shape == (6, 16)  # 2 global views x 3 images, 32 px / 8
    assert batch.global_boxes.shape == (2, 3, 4) and batch.local_boxes.shape == (3, 3, 4)


def test_transform_switch_and_the_device_stage_make_the_usual_batch() -> None:
    torch.manual_seed(0)
    transform = MultiCropTransform(32, 16, 3, device_stage="crops", max_side=64)
    assert transform.device_ops is not None and transform.decode_max_side == 64
    batch = transform.collate([(transform(photo(50, 70, s)), -1) for s in range(2)])
    crops = crop_sources(batch)
    assert isinstance(crops, MultiCropBatch) and crops.batch_size == 2
    assert [tuple(c.shape) for c in crops.global_crops] == [(2, 3, 32, 32)] * 2
    assert [tuple(c.shape) for c in crops.local_crops] == [(2, 3, 16, 16)] * 3
    globals_, locals_ = transform.device_ops(crops.global_crops, crops.local_crops)
    assert all(c.dtype == torch.float32 and c.abs().max() < 5 for c in globals_ + locals_)  # normalised
    assert MultiCropTransform(32, 16, 3).crop_plan is None  # other stages: the usual crops and collate


def test_datamodule_lets_the_jpeg_decoder_shrink_for_device_crops(tmp_path) -> None:
    from sslvit.data import ImageFolderDataset, SSLDataModule

    photo(40, 50, 0).save(tmp_path / "a.jpg")
    for stage, expected in (("crops", 64), ("photometric", None)):
        folder = ImageFolderDataset(tmp_path, labelled=False)
        transform = MultiCropTransform(32, 16, 2, device_stage=stage, max_side=64)
        dm = SSLDataModule(train_set=folder, transform=transform, batch_size=1, num_workers=0, patch_size=8)
        assert dm.train_set.decode_max_side == expected and folder.decode_max_side is None
