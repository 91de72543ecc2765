"""The multi-crop Gaussian blur: an exact Gaussian to uint8 rounding, random sigma, per-view probability."""

import numpy as np
import pytest
from PIL import Image

import sslvit.data.transforms.blur as blur_module
from sslvit.data import MultiCropTransform
from sslvit.data.transforms import GaussianBlur, blur_kernel_size
from sslvit.data.transforms.blur import blur_pil, gaussian_kernel


def photo_like(size: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields plus noise, as a crop of a photo: edges and flat regions both."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    noise = rng.normal(0, 20, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def direct_blur(image: Image.Image, kernel: np.ndarray) -> np.ndarray:
    """float64 2-D convolution with the outer product of ``kernel``, reflect padding; not rounded."""
    pixels = np.asarray(image, dtype=np.float64)
    radius = len(kernel) // 2
    padded = np.pad(pixels, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = pixels.shape[:2]
    out = np.zeros_like(pixels)
    for (dy, dx), weight in np.ndenumerate(np.outer(kernel, kernel)):
        out += weight * padded[dy : dy + height, dx : dx + width]
    return out


@pytest.mark.parametrize(("size", "sigma"), [(64, 0.6), (98, 1.3), (224, 2.0), (40, 1.7)])
def test_blur_equals_a_direct_2d_convolution(size, sigma):
    image = photo_like(size, seed=size)
    kernel_size = blur_kernel_size(size)
    kernel = gaussian_kernel(kernel_size, sigma)
    expected = direct_blur(image, kernel)
    out = np.asarray(blur_pil(image, kernel_size, sigma), dtype=np.float64)
    assert np.abs(out - expected).max() <= 0.5 + 1e-3  # rounding to uint8 only
    # float32 sums land on the other side of a half level only where the exact value is nearly there
    assert (out != np.rint(expected)).mean() < 1e-3
    assert np.abs(out - np.asarray(image, dtype=np.float64)).mean() > 5  # and it did blur


def test_kernel_is_cut_at_four_sigma_or_the_crops_kernel():
    assert len(gaussian_kernel(23, 2.0)) == 17  # ceil(4 x 2) = 8 either side
    assert len(gaussian_kernel(23, 0.5)) == 5
    assert len(gaussian_kernel(11, 2.0)) == 11  # a 98-px crop keeps its 11-tap cap
    kernel = gaussian_kernel(23, 1.0)
    assert kernel.sum() == pytest.approx(1.0)
    assert len(kernel) == 9 and kernel[4] / kernel[3] == pytest.approx(np.exp(0.5))  # offsets 0 and 1
    # cutting at 4 sigma moves no value by more than 0.03 grey levels from the crop's full kernel
    image = photo_like(224)
    full = direct_blur(image, _full_kernel(23, 2.0))
    out = np.asarray(blur_pil(image, 23, 2.0), dtype=np.float64)
    assert np.abs(out - full).max() <= 0.5 + 0.03


def _full_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    offsets = np.arange(kernel_size) - kernel_size // 2
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def test_a_sigma_too_small_to_move_a_level_leaves_the_image_as_it_is():
    image = photo_like(48)
    # sigma 0.25: the exact blur rounds back to every input pixel, so returning the input is exact
    assert np.array_equal(np.rint(direct_blur(image, gaussian_kernel(5, 0.25))), np.asarray(image))
    assert np.array_equal(np.asarray(blur_pil(image, 5, 0.25)), np.asarray(image))
    assert not np.array_equal(np.asarray(blur_pil(image, 5, 0.35)), np.asarray(image))


def test_grey_images_and_edges():
    grey = photo_like(30).convert("L")
    out = blur_pil(grey, 3, 1.0)
    assert out.mode == "L" and out.size == (30, 30)
    expected = direct_blur(grey.convert("RGB"), gaussian_kernel(3, 1.0))[..., 0]
    assert np.abs(np.asarray(out, dtype=np.float64) - expected).max() <= 0.5 + 1e-3
    # a constant image stays constant, corners included (reflect padding adds no other value)
    flat = np.asarray(blur_pil(Image.new("RGB", (9, 7), (10, 20, 30)), 7, 2.0))
    assert (flat == np.array([10, 20, 30], dtype=np.uint8)).all()
    with pytest.raises(ValueError, match="larger than 4x4"):
        blur_pil(Image.new("RGB", (4, 4)), 11, 2.0)


def test_sigma_is_drawn_uniformly_within_its_range(monkeypatch):
    drawn: list[float] = []
    monkeypatch.setattr(blur_module, "blur_pil", lambda image, kernel_size, sigma: drawn.append(sigma))
    blur = GaussianBlur(23, sigma=(0.1, 2.0))
    for _ in range(2000):
        blur(None)
    sigmas = np.array(drawn)
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0
    assert sigmas.mean() == pytest.approx(1.05, abs=0.05)  # uniform: mean 1.05, std 0.55 / sqrt(2000)
    assert np.histogram(sigmas, bins=4, range=(0.1, 2.0))[0].min() > 400  # about 500 each


def test_each_view_blurs_with_its_probability(monkeypatch):
    # DINOv2's effective probabilities: global 1 never, global 2 nine times in ten, locals one in two
    calls: list[int] = []
    monkeypatch.setattr(GaussianBlur, "__call__", lambda self, image: calls.append(self.kernel_size) or image)
    transform = MultiCropTransform(
        64, 32, num_local_crops=2, blur_p=(0.0, 0.9, 0.5), color_jitter_p=0.0, grayscale_p=0.0,
        solarize_p=0.0, device_stage="none",
    )  # fmt: skip
    images = 400
    image = photo_like(64)
    for _ in range(images):
        transform(image)
    global_rate = calls.count(blur_kernel_size(64)) / images  # global views only: kernel 7
    local_rate = calls.count(blur_kernel_size(32)) / (2 * images)  # kernel 3
    assert global_rate == pytest.approx(0.9, abs=0.05)  # binomial std 0.015
    assert local_rate == pytest.approx(0.5, abs=0.06)  # std 0.018
