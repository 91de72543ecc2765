"""The on-device photometric ops match torchvision's per-image definitions, sample by sample."""

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from sslvit.data.batch import MultiCropBatch
from sslvit.data.transforms import MultiCropTransform
from sslvit.data.transforms.device_photometric import (
    DevicePhotometric,
    PhotometricRecipe,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    gaussian_blur,
    grayscale,
    solarize,
)


def images(n: int = 4, size: int = 12) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(n, 3, size, size)


@pytest.mark.parametrize(
    ("ours", "reference", "factors"),
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.3, 1.4]),
        (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.3, 1.4]),
        (adjust_saturation, TF.adjust_saturation, [0.0, 0.8, 1.0, 1.2]),
        (adjust_hue, TF.adjust_hue, [-0.1, -0.03, 0.0, 0.1]),
    ],
)
def test_colour_ops_match_torchvision_per_sample(ours, reference, factors):
    x = images()
    out = ours(x, torch.tensor(factors))
    for i, factor in enumerate(factors):
        assert torch.allclose(out[i], reference(x[i], factor), atol=1e-5), (ours.__name__, factor)


def test_hue_keeps_grey_and_black_pixels():
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1).expand(3, 3, 2).reshape(1, 3, 3, 2).clone()
    x = x.permute(0, 2, 1, 3).contiguous()  # grey rows: r = g = b
    assert torch.allclose(adjust_hue(x, torch.tensor([0.3])), x, atol=1e-6)


def test_grayscale_blur_and_solarize_match_torchvision():
    x = images(3, 16)
    assert torch.allclose(grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)
    sigmas = [0.1, 0.9, 2.0]
    blurred = gaussian_blur(x, 5, torch.tensor(sigmas))
    for i, sigma in enumerate(sigmas):
        assert torch.allclose(blurred[i], TF.gaussian_blur(x[i], [5, 5], [sigma, sigma]), atol=1e-5)
    as_uint8 = (x * 255).round().to(torch.uint8)
    reference = TF.solarize(as_uint8, 128).float() / 255
    assert torch.allclose(solarize(as_uint8.float() / 255), reference, atol=1e-6)


def recipe(**overrides) -> PhotometricRecipe:
    values = dict(color_jitter=(0.4, 0.4, 0.2, 0.1), color_jitter_p=0.8, grayscale_p=0.2, blur_p=0.5,
                  blur_sigma=(0.1, 2.0), solarize_p=0.2, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    values.update(overrides)
    return PhotometricRecipe(**values)


def test_nothing_applied_is_just_normalisation():
    crops = (images(5) * 255).round().to(torch.uint8)
    off = recipe(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)
    out = DevicePhotometric(off)(crops)
    assert torch.allclose(out, (crops.float() / 255 - 0.5) / 0.25, atol=1e-6)


def test_each_op_hits_about_its_share_of_samples_and_draws_repeat_with_the_seed():
    crops = (images(2000, 8) * 255).round().to(torch.uint8)
    gray_only = DevicePhotometric(recipe(color_jitter_p=0.0, grayscale_p=0.3, blur_p=0.0, solarize_p=0.0))
    out = gray_only(crops, torch.Generator().manual_seed(1))
    is_gray = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert 0.25 < is_gray.float().mean() < 0.35
    again = gray_only(crops, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    full = DevicePhotometric(recipe())
    first, second = (full(crops, torch.Generator().manual_seed(s)) for s in (1, 2))
    assert not torch.equal(first, second)


def test_transform_leaves_uint8_crops_and_the_device_stage_finishes_them():
    image = Image.fromarray((images(1, 40)[0].permute(1, 2, 0) * 255).byte().numpy())
    transform = MultiCropTransform(16, 8, 3, mean=(0.5,) * 3, std=(0.25,) * 3, device_stage="photometric")
    global_crops, local_crops = transform(image)
    assert all(c.dtype == torch.uint8 for c in global_crops + local_crops)
    assert [tuple(c.shape) for c in global_crops] == [(3, 16, 16)] * 2 and len(local_crops) == 3
    batch = MultiCropBatch(
        global_crops=[torch.stack([c, c]) for c in global_crops],
        local_crops=[torch.stack([c, c]) for c in local_crops],
        labels=torch.tensor([-1, -1]),
    )
    out_globals, out_locals = transform.device_ops(batch.global_crops, batch.local_crops)
    assert all(c.dtype == torch.float32 for c in out_globals + out_locals)
    assert out_globals[0].shape == (2, 3, 16, 16) and out_locals[0].shape == (2, 3, 8, 8)
    assert MultiCropTransform(16, 8, 3, device_stage="none").device_ops is None  # the workers do everything
