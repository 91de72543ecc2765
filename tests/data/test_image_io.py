import re

import numpy as np
import pytest
from PIL import Image

from sslvit.data.image_io import UnreadableImageError, load_rgb


def _pixels(path):
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale_is_replicated(tmp_path):
    Image.new("L", (5, 4), 100).save(tmp_path / "g.png")
    pixels = _pixels(tmp_path / "g.png")
    assert pixels.shape == (4, 5, 3)
    assert (pixels == 100).all()


@pytest.mark.parametrize(("alpha", "expected"), [(255, 100), (0, 0), (128, 50)])
def test_la_is_composited_on_black(tmp_path, alpha, expected):
    Image.new("LA", (3, 3), (100, alpha)).save(tmp_path / "la.png")
    assert np.abs(_pixels(tmp_path / "la.png").astype(int) - expected).max() <= 1


@pytest.mark.parametrize(("alpha", "expected"), [(255, (200, 100, 50)), (0, (0, 0, 0)), (128, (100, 50, 25))])
def test_rgba_is_composited_on_black(tmp_path, alpha, expected):
    Image.new("RGBA", (3, 3), (200, 100, 50, alpha)).save(tmp_path / "a.png")
    assert np.abs(_pixels(tmp_path / "a.png").astype(int) - np.array(expected)).max() <= 1


def test_palette_with_transparent_index(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png", transparency=0)
    pixels = _pixels(tmp_path / "p.png")
    assert pixels[0, 0].tolist() == [0, 0, 0]  # index 0 is transparent -> black
    assert pixels[0, 1].tolist() == [200, 150, 100]


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (1, 1))
    image.putpalette([10, 20, 30] + [0] * 765)
    image.save(tmp_path / "p.gif")
    assert _pixels(tmp_path / "p.gif")[0, 0].tolist() == [10, 20, 30]


def test_cmyk(tmp_path):
    image = Image.new("CMYK", (2, 1))
    image.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    image.putpixel((1, 0), (255, 0, 0, 0))  # full cyan
    image.save(tmp_path / "c.tif")
    pixels = _pixels(tmp_path / "c.tif")
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[0, 1].tolist() == [0, 255, 255]


def test_16bit_png_is_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")  # really a 16-bit file
    pixels = _pixels(tmp_path / "d.png")
    assert pixels[0, :, 0].tolist() == [0, 1, 128, 255]  # clipping would give [0, 255, 255, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_32bit_out_of_16bit_range_is_min_max_scaled(tmp_path):
    Image.fromarray(np.array([[-1000, 99000]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert _pixels(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 255]


def test_truncated_jpeg_fails_at_load(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=re.escape(str(path))):
        load_rgb(path)


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "x.jpg").write_text("hello, I am text")
    with pytest.raises(UnreadableImageError, match=r"x\.jpg"):
        load_rgb(tmp_path / "x.jpg")
    with pytest.raises(UnreadableImageError, match=r"missing\.png"):
        load_rgb(tmp_path / "missing.png")


def _photo(path, size):
    """A smooth colour field (as photos are, so the reduced-scale decode can be compared pixel-wise)."""
    coarse = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8))
    coarse.resize(size, Image.Resampling.BICUBIC).save(path, quality=95)
    return path


def test_max_side_decodes_large_jpegs_at_a_reduced_scale(tmp_path):
    path = _photo(tmp_path / "big.jpg", (1600, 1200))
    full, reduced = load_rgb(path), load_rgb(path, max_side=512)
    assert full.size == (1600, 1200)
    assert reduced.size == (800, 600)  # 1/2 scale: 1/4 would leave the long side (400) under 512
    assert load_rgb(path, max_side=300).size == (400, 300)  # 1/4 scale: the long side stays >= 300
    # The same picture: compare with the full decode shrunk to the same size.
    shrunk = np.asarray(full.resize(reduced.size, Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(np.asarray(reduced, dtype=np.float64) - shrunk).mean() < 2.0


def test_max_side_leaves_small_jpegs_and_other_formats_alone(tmp_path):
    small = _photo(tmp_path / "small.jpg", (400, 300))
    assert load_rgb(small, max_side=512).size == (400, 300)
    png = tmp_path / "big.png"
    Image.open(_photo(tmp_path / "tmp.jpg", (1600, 1200))).save(png)
    assert load_rgb(png, max_side=512).size == (1600, 1200)
