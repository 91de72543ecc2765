"""Any number of channels: array files, the axis and scaling rules, per-channel statistics, the views."""

import logging

import numpy as np
import pytest
import tifffile
import torch
from omegaconf import OmegaConf
from PIL import Image

from sslvit.data import EvalTransform, ImageFolderDataset, MultiCropTransform, SingleCropTransform
from sslvit.data.array_io import check_scale, scale_to_unit, to_chw
from sslvit.data.channels import channel_values, colour_ops
from sslvit.data.collate import collate_multicrop
from sslvit.data.image_io import UnreadableImageError, load_image
from sslvit.data.stats import channel_stats
from sslvit.data.stats import main as stats_main
from sslvit.data.transforms import BEiTTransform
from sslvit.data.transforms.device_photometric import DeviceMultiCrop, recipes_of
from sslvit.visualize.render import denormalize

# --- the axis rule -------------------------------------------------------------------------------------


def test_bands_are_found_on_the_axis_of_in_chans_entries():
    hwc = np.arange(6 * 7 * 5).reshape(6, 7, 5)
    chw = to_chw(hwc, 5)
    assert chw.shape == (5, 6, 7) and np.array_equal(chw[2], hwc[..., 2])
    pages = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    assert to_chw(pages, 5) is pages  # already channels first
    assert to_chw(np.zeros((6, 7)), 1).shape == (1, 6, 7)  # a 2-D array is one band
    assert to_chw(np.zeros((1, 1, 5, 6, 7)), 5).shape == (5, 6, 7)  # leading length-1 axes dropped


def test_an_image_whose_side_equals_the_band_count_takes_the_last_axis():
    # (4, 6, 4) with in_chans=4: both ends fit; the documented rule says H x W x C.
    array = np.arange(4 * 6 * 4).reshape(4, 6, 4)
    chw = to_chw(array, 4)
    assert chw.shape == (4, 4, 6) and np.array_equal(chw[1], array[:, :, 1])


@pytest.mark.parametrize(
    ("shape", "in_chans", "message"),
    [
        ((6, 7), 3, "has 1 band"),
        ((2, 6, 7), 5, "neither its first nor its last axis has data.in_chans=5 bands"),
        ((2, 2, 6, 7), 2, "expected H x W"),
    ],
)
def test_a_wrong_band_count_is_named(shape, in_chans, message):
    with pytest.raises(ValueError, match=message):
        to_chw(np.zeros(shape), in_chans)


# --- the scaling rules ---------------------------------------------------------------------------------


def test_dtype_max_divides_integers_by_their_largest_value_and_keeps_floats():
    got = scale_to_unit(np.array([[[0, 32768, 65535]]], dtype=np.uint16), "dtype_max")
    assert np.allclose(got, [[[0.0, 32768 / 65535, 1.0]]]) and got.dtype == np.float32
    signed = scale_to_unit(np.array([[[-5, 16384, 32767]]], dtype=np.int16), "dtype_max")
    assert np.allclose(signed, [[[0.0, 16384 / 32767, 1.0]]])  # negative values clip to 0
    floats = np.array([[[0.25, 1.5]]], dtype=np.float64)
    assert np.allclose(scale_to_unit(floats, "dtype_max"), floats)  # floats are taken as stored


def test_min_max_and_percentile_scale_each_band_on_its_own():
    bands = np.stack([np.array([[2.0, 4.0, 6.0]]), np.array([[7.0, 7.0, 7.0]])])  # (2, 1, 3)
    got = scale_to_unit(bands, "min_max")
    assert np.allclose(got[0], [[0.0, 0.5, 1.0]])
    assert np.allclose(got[1], 0.0)  # a constant band maps to 0, not to NaN
    ramp = np.arange(101, dtype=np.uint16).reshape(1, 1, 101)  # values 0..100
    # Percentiles 10 and 90 of 0..100 are 10 and 90: 30 -> (30 - 10) / 80 = 0.25; the tails clip.
    got = scale_to_unit(ramp, "percentile", (10.0, 90.0))[0, 0]
    assert got[30] == pytest.approx(0.25) and got[0] == 0.0 and got[100] == 1.0
    assert np.allclose(scale_to_unit(ramp, "none")[0, 0, [3, 100]], [3.0, 100.0])


def test_non_finite_values_and_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        scale_to_unit(np.array([[[0.5, np.nan]]], dtype=np.float32), "dtype_max")
    with pytest.raises(ValueError, match=r"data\.scale must be one of dtype_max, min_max, percentile, none"):
        check_scale("max")
    with pytest.raises(ValueError, match="scale_percentiles"):
        check_scale("percentile", (90, 10))


# --- reading files -------------------------------------------------------------------------------------


def test_multi_page_uint16_tiff_and_float_npy_become_unit_band_tensors(tmp_path):
    pages = np.stack([np.full((6, 7), v, dtype=np.uint16) for v in (0, 6553, 65535)])  # (3, 6, 7)
    tifffile.imwrite(tmp_path / "a.tif", pages, photometric="minisblack")  # three grey pages
    tif = load_image(tmp_path / "a.tif", in_chans=3)
    assert isinstance(tif, torch.Tensor) and tif.shape == (3, 6, 7) and tif.dtype == torch.float32
    assert torch.allclose(tif[:, 0, 0], torch.tensor([0.0, 6553 / 65535, 1.0]), atol=1e-7)
    hwc = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    np.save(tmp_path / "b.npy", hwc)
    npy = load_image(tmp_path / "b.npy", in_chans=5)
    assert npy.shape == (5, 6, 7) and torch.allclose(npy[4], torch.from_numpy(hwc[..., 4]))


def test_eight_bit_grey_or_rgb_arrays_take_the_picture_path(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb)
    image = load_image(tmp_path / "rgb.tif", in_chans=3)
    assert isinstance(image, Image.Image) and image.mode == "RGB" and np.array_equal(np.asarray(image), rgb)
    np.save(tmp_path / "grey.npy", rgb[..., 0])
    grey = load_image(tmp_path / "grey.npy", in_chans=1)
    assert isinstance(grey, Image.Image) and grey.mode == "L"
    # Another scale rule keeps the tensor path: the rule applies to arrays whatever their dtype.
    assert isinstance(load_image(tmp_path / "grey.npy", in_chans=1, scale="min_max"), torch.Tensor)


def test_pictures_serve_grey_for_one_channel_and_refuse_other_counts(tmp_path):
    Image.new("RGB", (5, 4), (200, 100, 50)).save(tmp_path / "x.png")
    grey = load_image(tmp_path / "x.png", in_chans=1)
    # ITU-R 601-2 luma, as Pillow computes it: 0.299 * 200 + 0.587 * 100 + 0.114 * 50 = 124.2.
    assert grey.mode == "L" and np.asarray(grey)[0, 0] == 124
    with pytest.raises(UnreadableImageError, match=r"x\.png: a picture holds grey or RGB, data.in_chans=5"):
        load_image(tmp_path / "x.png", in_chans=5)


def test_lzw_tiff_pages_are_read_through_pillow_without_imagecodecs(tmp_path):
    # tifffile leaves LZW to the optional imagecodecs package; Pillow decodes it page by page.
    pages = [Image.fromarray(np.full((4, 5), v, dtype=np.uint16)) for v in (100, 200)]
    pages[0].save(tmp_path / "lzw.tif", compression="tiff_lzw", save_all=True, append_images=pages[1:])
    bands = load_image(tmp_path / "lzw.tif", in_chans=2)
    assert bands.shape == (2, 4, 5)
    assert torch.allclose(bands[:, 0, 0], torch.tensor([100 / 65535, 200 / 65535]))


def test_a_file_with_the_wrong_band_count_is_skipped_and_counted(tmp_path, caplog):
    folder = tmp_path / "cls"
    folder.mkdir()
    np.save(folder / "good.npy", np.zeros((4, 4, 5), dtype=np.float32))
    np.save(folder / "three.npy", np.zeros((4, 4, 3), dtype=np.float32))
    (folder / "broken.tif").write_bytes(b"II*\x00garbage")
    dataset = ImageFolderDataset(tmp_path, in_chans=5)
    with caplog.at_level(logging.WARNING):
        samples = [dataset[i] for i in range(len(dataset))]
    assert [s is None for s in samples] == [True, False, True]  # broken.tif, good.npy, three.npy
    assert "three.npy: has shape (4, 4, 3)" in caplog.text
    transform = MultiCropTransform(32, 16, num_local_crops=1, mean=[0.5], std=[0.5], in_chans=5)
    views = [None if s is None else (transform(s[0]), s[1]) for s in samples]
    assert collate_multicrop(views).num_skipped == 2
    strict = ImageFolderDataset(tmp_path, in_chans=5, on_bad_image="fail")
    with pytest.raises(UnreadableImageError, match=r"three\.npy: has shape \(4, 4, 3\).*on_bad_image=skip"):
        strict[2]


# --- per-channel values and colour ops -----------------------------------------------------------------


def test_one_value_serves_every_channel_and_other_counts_are_refused():
    assert channel_values([0.5], 4, "m") == (0.5, 0.5, 0.5, 0.5)
    assert channel_values([0.1, 0.2], 2, "m") == (0.1, 0.2)
    with pytest.raises(ValueError, match=r"data.transform.mean has 3 values but data.in_chans=5"):
        channel_values([0.1, 0.2, 0.3], 5, "data.transform.mean")


def test_rgb_only_colour_ops_are_off_for_other_channel_counts():
    rgb = colour_ops(3, (0.4, 0.4, 0.2, 0.1), 0.2)
    assert rgb.color_jitter == (0.4, 0.4, 0.2, 0.1) and rgb.grayscale_p == 0.2 and rgb.note is None
    grey = colour_ops(1, (0.4, 0.4, 0.2, 0.1), 0.2)
    assert grey.color_jitter == (0.4, 0.4, 0.0, 0.0) and grey.grayscale_p == 0.0
    assert "saturation, hue, greyscale off" in grey.note
    assert colour_ops(5, (0.4, 0.4, 0.0, 0.0)).note is None  # nothing to switch off: nothing to say


# --- the views on C-channel tensors --------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["none", "normalize", "photometric"])
def test_multicrop_views_of_a_five_band_image(stage, caplog):
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO):
        transform = MultiCropTransform(
            32, 16, num_local_crops=2, mean=[0.5], std=[0.25], device_stage=stage, in_chans=5
        )
    notes = [r.message for r in caplog.records if "5-channel images" in r.message]
    assert len(notes) == 1 and "saturation, hue, greyscale off" in notes[0]
    global_crops, local_crops = transform(torch.rand(5, 40, 36))
    assert [c.shape for c in global_crops] == [(5, 32, 32)] * 2
    assert [c.shape for c in local_crops] == [(5, 16, 16)] * 2
    assert all(c.dtype == torch.float32 for c in global_crops + local_crops)
    # Without jitter and solarisation, a constant 0.6 image stays 0.6 through crop, flip and blur and is
    # normalised to (0.6 - 0.5) / 0.25 = 0.4 in every band, in the worker or on the device.
    still = MultiCropTransform(
        32, 16, num_local_crops=2, mean=[0.5], std=[0.25], color_jitter_p=0.0, solarize_p=0.0,
        device_stage=stage, in_chans=5,
    )  # fmt: skip
    views = still(torch.full((5, 40, 36), 0.6))
    if still.device_ops is not None:
        batch = collate_multicrop([(views, 0), (views, 1)])
        views = still.device_ops(batch.global_crops, batch.local_crops, torch.Generator().manual_seed(0))
    for crops in (*views[0], *views[1]):
        assert torch.allclose(crops, torch.tensor(0.4), atol=1e-4)


def test_grey_pictures_keep_one_channel_through_every_view():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8))
    crops, _ = MultiCropTransform(28, 14, num_local_crops=1, mean=[0.286], std=[0.353], in_chans=1)(image)
    assert crops[0].shape == (1, 28, 28) and crops[0].dtype == torch.uint8
    assert EvalTransform(28, mean=[0.286], std=[0.353], in_chans=1)(image).shape == (1, 28, 28)
    plan = MultiCropTransform(
        28, 14, num_local_crops=1, mean=[0.5], std=[0.5], device_stage="crops", in_chans=1
    )
    assert plan(image)[0].shape == (1, 30, 30)


def test_eval_single_crop_and_beit_views_of_band_tensors():
    image = torch.rand(4, 30, 40)
    evaluated = EvalTransform(16, resize_size=20, mean=[0.0], std=[1.0], in_chans=4)(image)
    assert evaluated.shape == (4, 16, 16)
    # Resize 20 then centre-crop 16 of an image equal everywhere gives that value back.
    assert torch.allclose(
        EvalTransform(16, 20, [0.0], [1.0], 4)(torch.full((4, 30, 40), 0.3)), torch.tensor(0.3), atol=1e-5
    )
    view, _ = SingleCropTransform(16, in_chans=4)(image)
    assert view.shape == (4, 16, 16) and float(view.min()) >= 0.0 and float(view.max()) <= 1.0
    vit, tok = BEiTTransform(16, patch_size=8, tokenizer_downsample=4, mean=[0.5], std=[0.5], in_chans=4)(
        image
    )
    assert vit.shape == (4, 16, 16) and tok.shape == (4, 8, 8)


def test_crops_of_pictures_and_arrays_stack_as_float():
    picture = (([torch.full((1, 2, 2), 255, dtype=torch.uint8)], []), 0)
    array = (([torch.full((1, 2, 2), 0.5)], []), 1)
    batch = collate_multicrop([picture, array])
    assert batch.global_crops[0].dtype == torch.float32
    assert torch.allclose(batch.global_crops[0][:, 0, 0, 0], torch.tensor([1.0, 0.5]))


def test_device_recipe_runs_contrast_on_band_means():
    # Contrast factor 0 blends every pixel to the image mean over channels and pixels.
    recipe = recipes_of(
        (0.0, 0.5, 0.0, 0.0), 1.0, 0.0, (0.0, 0.0, 0.0), (0.1, 2.0), 0.0, [0.0] * 2, [1.0] * 2
    )
    crops = torch.tensor([[[[0.2, 0.4]], [[0.6, 0.8]]]])  # (1, 2, 1, 2): mean 0.5
    out, _ = DeviceMultiCrop(recipe)([crops], [], torch.Generator().manual_seed(0))
    factor_blend = out[0] - 0.5  # = factor * (x - 0.5) for the one drawn factor
    ratio = factor_blend / (crops - 0.5)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-5)


def test_denormalize_shows_the_first_three_bands_or_the_first_as_grey():
    five = torch.arange(5.0).view(1, 5, 1, 1) / 10
    shown = denormalize(five, mean=[0.0], std=[1.0])
    assert torch.allclose(shown.flatten(), torch.tensor([0.0, 0.1, 0.2]))
    two = denormalize(torch.tensor([0.3, 0.9]).view(1, 2, 1, 1), mean=[0.0], std=[1.0])
    assert torch.allclose(two.flatten(), torch.tensor([0.3, 0.3, 0.3]))


# --- per-channel statistics ----------------------------------------------------------------------------


class _Pixels:
    """Two images of different sizes and an unreadable one: channel 0 = 0, 1 | 1, 1, 1, 1."""

    samples = (
        (torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]]]), 0),  # (2, 1, 2)
        None,
        (torch.tensor([[[1.0, 1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]]]), 0),  # (2, 1, 4)
    )

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self.samples[index]


def test_channel_stats_weigh_every_pixel_alike_and_skip_unreadable_images():
    mean, std, used, skipped = channel_stats(_Pixels(), samples=None)
    # Channel 0: values 0, 1, 1, 1, 1, 1 -> mean 5/6, variance 5/6 - 25/36 = 5/36.
    # Channel 1: 0.5, 0.5, 0, 0, 0, 0 -> mean 1/6, variance 1/12 - 1/36 = 2/36.
    assert mean == pytest.approx([5 / 6, 1 / 6]) and std == pytest.approx([5**0.5 / 6, 2**0.5 / 6])
    assert (used, skipped) == (2, 1)


def test_stats_command_prints_and_writes_a_data_config(tmp_path, capsys):
    out = tmp_path / "fake_bands.yaml"
    result = stats_main(["data=fake", "data.in_chans=2", "data.batch_size=4", "samples=16", f"out={out}"])
    printed = capsys.readouterr().out
    assert "16 images of FakeDataset(" in printed
    assert f"data.transform.mean=[{result['mean'][0]:.4f},{result['mean'][1]:.4f}]" in printed
    written = OmegaConf.load(out)
    assert list(written.defaults) == ["fake", "_self_"]
    assert written.in_chans == 2 and written.batch_size == 4
    assert written.transform.mean == pytest.approx([round(m, 4) for m in result["mean"]])
    assert len(written.transform.std) == 2 and all(0.0 < s < 0.5 for s in written.transform.std)
