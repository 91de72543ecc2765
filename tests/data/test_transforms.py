import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from sslvit.data import EvalTransform, MultiCropTransform
from sslvit.data.transforms import GaussianBlur, blur_kernel_size
from sslvit.data.transforms.blur import blur_pil

NO_AUGMENT = dict(
    global_crop_scale=(1.0, 1.0),
    flip_p=0.0,
    color_jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=(0.0, 0.0, 0.0),
    solarize_p=0.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    device_stage="none",  # the whole recipe in the worker: normalised float crops
)


def _random_image(size=(40, 40), seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_counts_and_sizes():
    transform = MultiCropTransform(28, 12, num_local_crops=6, device_stage="none")
    global_crops, local_crops = transform(_random_image())
    assert len(global_crops) == 2 and len(local_crops) == 6
    assert all(c.shape == (3, 28, 28) and c.dtype == torch.float32 for c in global_crops)
    assert all(c.shape == (3, 12, 12) for c in local_crops)
    g3, l0 = MultiCropTransform(32, 16, 0, num_global_crops=3)(_random_image())
    assert len(g3) == 3 and l0 == []


def test_blur_kernel_is_odd_and_about_a_tenth():
    assert [blur_kernel_size(s) for s in (224, 96, 28, 12)] == [23, 11, 3, 3]


def test_no_augmentation_is_just_normalisation():
    image = _random_image((32, 32))
    global_crops, _ = MultiCropTransform(32, 16, 1, **NO_AUGMENT)(image)
    expected = (torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    for crop in global_crops:  # full-area crop of a square image at its own size: identity
        torch.testing.assert_close(crop, expected)


def test_solarisation_only_on_the_second_global_view():
    image = Image.new("RGB", (16, 16), (200, 200, 200))
    options = {**NO_AUGMENT, "solarize_p": 1.0}
    (first, second), _ = MultiCropTransform(16, 8, 0, **options)(image)
    assert first.mul(0.5).add(0.5).mul(255).round().unique().tolist() == [200.0]
    assert second.mul(0.5).add(0.5).mul(255).round().unique().tolist() == [55.0]  # 255 - 200


def test_views_differ_and_are_seeded_by_torch():
    transform = MultiCropTransform(32, 16, 2)
    torch.manual_seed(0)
    a = transform(_random_image())
    torch.manual_seed(0)
    b = transform(_random_image())
    torch.testing.assert_close(a[0][0], b[0][0])
    assert not torch.equal(a[0][0], a[0][1])


def test_bad_arguments():
    with pytest.raises(ValueError, match="blur_p"):
        MultiCropTransform(32, 16, 2, blur_p=(1.0, 0.1))
    with pytest.raises(ValueError, match="num_global_crops"):
        MultiCropTransform(32, 16, 2, num_global_crops=0)


def test_eval_transform_identity_for_28px():
    image = _random_image((28, 28))
    out = EvalTransform(28, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(image)
    torch.testing.assert_close(out, torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255)


def test_eval_transform_resize_then_center_crop():
    out = EvalTransform(224, resize_size=256)(_random_image((400, 300)))
    assert out.shape == (3, 224, 224)
    # a centred square of one colour on a different border survives resize + center crop
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (6, 0, 34, 20))  # the crop keeps x in [10, 30)
    out = EvalTransform(10, resize_size=10, mean=(0.0,) * 3, std=(1.0,) * 3)(image)
    assert out.shape == (3, 10, 10) and out.min() > 0.95
    with pytest.raises(ValueError, match="smaller than the crop"):
        EvalTransform(224, resize_size=200)


@pytest.mark.parametrize(("size", "kernel"), [(224, 23), (28, 3), (12, 3)])
def test_blur_matches_torchvision(size, kernel):
    image = _random_image((size, size), seed=size)
    expected = TF.gaussian_blur(image, [kernel, kernel], [1.3, 1.3])
    diff = np.abs(np.asarray(blur_pil(image, kernel, 1.3), dtype=int) - np.asarray(expected, dtype=int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float summation order only


def test_blur_of_a_constant_image_is_constant_and_sigma_is_random():
    assert np.asarray(blur_pil(Image.new("RGB", (5, 5), (10, 20, 30)), 3, 2.0))[2, 2].tolist() == [10, 20, 30]
    image = _random_image((16, 16))
    torch.manual_seed(0)
    blur = GaussianBlur(5, sigma=(0.1, 2.0))
    assert not np.array_equal(np.asarray(blur(image)), np.asarray(blur(image)))
    with pytest.raises(ValueError, match="odd"):
        GaussianBlur(4)
