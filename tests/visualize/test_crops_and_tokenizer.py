"""Crop / mask grids (view-major mask rows), reconstructions side by side, codebook usage, rendering."""

import math

import pytest
import torch

from sslvit.data.batch import MultiCropBatch
from sslvit.visualize import (
    codebook_histogram,
    codebook_usage,
    colorize,
    crops_and_masks_grid,
    denormalize,
    reconstruction_grid,
    save_png,
)


def test_masked_patch_is_shaded_in_the_right_view_and_image():
    batch_size, n_global = 3, 2
    globals_ = [torch.full((batch_size, 3, 16, 16), 0.5) for _ in range(n_global)]
    locals_ = [torch.full((batch_size, 3, 8, 8), 0.5)]
    masks = torch.zeros(n_global * batch_size, 16, dtype=torch.bool)
    masks[batch_size + 1, 5] = True  # view 1, image 1, patch (1, 1) of the 4x4 grid
    batch = MultiCropBatch(globals_, locals_, torch.zeros(batch_size), masks=masks)
    picture = crops_and_masks_grid(batch, mean=[0.0], std=[1.0], max_images=2)
    cell = 16 + 2  # make_grid padding 2
    assert picture.shape == (3, 2 * cell + 2, 3 * cell + 2)  # 2 images x (2 globals + 1 local)

    def pixel(row, col, y, x):
        return picture[:, 2 + row * cell + y, 2 + col * cell + x]

    shaded = torch.tensor([0.5 * 0.4 + 0.6, 0.5 * 0.4 + 0.06, 0.5 * 0.4 + 0.06])
    torch.testing.assert_close(pixel(1, 1, 4 + 2, 4 + 2), shaded)  # inside patch (1, 1)
    torch.testing.assert_close(pixel(1, 1, 0, 0), torch.full((3,), 0.5))
    torch.testing.assert_close(pixel(0, 1, 6, 6), torch.full((3,), 0.5))  # image 0 of view 1 unmasked
    torch.testing.assert_close(pixel(1, 0, 6, 6), torch.full((3,), 0.5))  # view 0 unmasked
    # The 8-px local crop sits in the middle of its 16-px cell on white.
    torch.testing.assert_close(pixel(0, 2, 0, 0), torch.ones(3))
    torch.testing.assert_close(pixel(0, 2, 8, 8), torch.full((3,), 0.5))


def test_denormalize_undoes_normalisation_and_greys_become_rgb():
    x = torch.tensor([0.25, 0.75]).view(1, 1, 1, 2)
    out = denormalize((x - 0.5) / 0.25, mean=[0.5], std=[0.25])
    assert out.shape == (1, 3, 1, 2)
    torch.testing.assert_close(out[0, :, 0, 1], torch.full((3,), 0.75))


def test_colorize_ends_of_the_scale():
    rgb = colorize(torch.tensor([[[0.0, 2.0]]]))
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([0.267, 0.005, 0.329]))  # dark purple
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([0.993, 0.906, 0.144]))  # yellow


def test_codebook_usage_counts_and_perplexity():
    ids = torch.tensor([[[0, 0], [1, 1]]])  # (B, h, w)
    usage = codebook_usage(ids, vocab_size=4)
    assert usage.counts.tolist() == [2, 2, 0, 0]
    assert usage.used_fraction == pytest.approx(0.5)
    assert usage.perplexity == pytest.approx(2.0)
    assert codebook_usage(torch.arange(8), 8).perplexity == pytest.approx(8.0)
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        codebook_usage(torch.tensor([4]), 4)


def test_codebook_histogram_draws_sorted_bars(tmp_path):
    ids = torch.cat([torch.zeros(90, dtype=torch.long), torch.full((10,), 7)])
    picture = codebook_histogram(codebook_usage(ids, 8192), width=256, height=100)
    assert picture.shape == (3, 100, 256)
    bottom = picture[:, 97]  # a row near the base: bars are dark, empty bins white
    assert float(bottom[:, 0].sum()) < 1.5  # most used code first
    assert float(bottom[:, -1].sum()) == pytest.approx(3.0)  # unused codes at the end
    assert save_png(picture, tmp_path / "h.png").stat().st_size > 0


def test_reconstruction_grid_alternates_rows_and_pads():
    images = torch.zeros(3, 3, 8, 8)
    recon = torch.ones(3, 3, 8, 8)
    picture = reconstruction_grid(images, recon, mean=[0.0], std=[1.0], ncol=2)
    assert picture.shape == (3, 4 * 10 + 2, 2 * 10 + 2)  # rows: orig, recon, orig, recon
    assert float(picture[:, 2 + 4, 2 + 4].sum()) == 0.0  # original (black)
    assert float(picture[:, 12 + 4, 2 + 4].sum()) == pytest.approx(3.0)  # reconstruction (white)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_grid(images, recon[:2])
    assert math.isfinite(float(picture.sum()))
