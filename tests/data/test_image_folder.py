import logging
import re

import numpy as np
import pytest
from PIL import Image

from sslvit.data import ImageFolderDataset, eval_image_folder


def _image(path, value=0, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def _broken_files(folder):
    """A truncated JPEG and a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "truncated.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:200])
    (folder / "text.jpg").write_text("not an image")


def test_labelled_class_ids_are_sorted_names(tmp_path):
    _image(tmp_path / "dog" / "a.png", 10)
    _image(tmp_path / "dog" / "nested" / "b.PNG", 20)  # recursive, case-insensitive extension
    _image(tmp_path / "cat" / "c.bmp", 30)
    _image(tmp_path / "bird" / "d.tif", 40)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    assert len(ds) == 4
    pixel_to_label = {int(np.asarray(img)[0, 0, 0]): label for img, label in (ds[i] for i in range(len(ds)))}
    assert pixel_to_label == {40: 0, 30: 1, 10: 2, 20: 2}
    assert ds.targets == [0, 1, 2, 2]  # sorted by class, then path


def test_unlabelled_recursive_scan(tmp_path):
    _image(tmp_path / "x.png")
    _image(tmp_path / "a" / "b" / "c" / "y.TIFF")
    _image(tmp_path / "a" / "z.gif")
    ds = ImageFolderDataset(tmp_path, labelled=False)
    assert len(ds) == 3
    assert ds.classes == []
    assert {ds[i][1] for i in range(3)} == {-1}
    assert ds[0][0].mode == "RGB"


def test_zero_byte_files_are_samples_that_cannot_be_read(tmp_path, caplog):
    # Kept as samples so that every epoch counts them in data/skipped_images (the loader replaces them).
    _image(tmp_path / "cls" / "ok.png")
    (tmp_path / "cls" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 2 and ds.num_empty_files == 1
    assert "1 image files" in caplog.text and "zero bytes" in caplog.text
    assert ds[0] is None  # empty.jpg sorts first
    assert ds[1] is not None
    assert "empty file" in caplog.text


def test_only_empty_files_is_an_error_at_scan(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "a.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"all 1 image files .* are empty"):
        ImageFolderDataset(tmp_path)


def test_symlink_loop_adds_no_samples_and_keeps_labels(tmp_path):
    # The user's report: a/up -> .. turned 8 files into 328 samples with mixed labels.
    for name in ("a", "b"):
        for i in range(4):
            _image(tmp_path / name / f"{i}.png", 10 if name == "a" else 20)
    (tmp_path / "a" / "up").symlink_to("..")
    (tmp_path / "b" / "to_a").symlink_to("../a")  # another class's folder: its images stay class a
    ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 8
    assert ds.targets == [0] * 4 + [1] * 4
    assert all(("/a/" in p) == (label == 0) for p, label in ds.samples)


def test_two_symlink_loops_do_not_hang_unlabelled(tmp_path):
    _image(tmp_path / "x" / "1.png")
    _image(tmp_path / "y" / "2.png")
    (tmp_path / "x" / "to_y").symlink_to("../y")
    (tmp_path / "y" / "to_x").symlink_to("../x")
    (tmp_path / "x" / "self").symlink_to(".")
    (tmp_path / "x" / "same.png").symlink_to("1.png")  # the same file twice is one sample
    ds = ImageFolderDataset(tmp_path, labelled=False)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in ds.samples) == ["1.png", "2.png"]


def test_symlinked_folder_outside_the_root_is_followed(tmp_path):
    _image(tmp_path / "elsewhere" / "img.png")
    _image(tmp_path / "data" / "cls" / "own.png")
    (tmp_path / "data" / "cls" / "more").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "data" / "cls" / "grandparent").symlink_to(tmp_path)  # would bring in all of tmp_path
    ds = ImageFolderDataset(tmp_path / "data")
    assert len(ds) == 2 and ds.targets == [0, 0]
    assert len(ImageFolderDataset(tmp_path / "data", labelled=False)) == 2


def test_images_at_a_labelled_root_are_an_error_naming_them(tmp_path):
    _image(tmp_path / "cls" / "a.png")
    _image(tmp_path / "stray.jpg")
    with pytest.raises(
        ValueError, match=r"1 images in .* are in no class folder \(stray.jpg\).*labelled=false"
    ):
        ImageFolderDataset(tmp_path)
    assert len(ImageFolderDataset(tmp_path, labelled=False)) == 2


def test_unreadable_files_return_none_and_warn_once(tmp_path, caplog):
    _broken_files(tmp_path)
    ds = ImageFolderDataset(tmp_path, labelled=False)
    assert len(ds) == 2
    with caplog.at_level(logging.WARNING):
        assert ds[0] is None and ds[1] is None
        assert ds[0] is None  # second epoch: no new warning
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 2
    assert {"text.jpg" in r.getMessage() or "truncated.jpg" in r.getMessage() for r in warnings} == {True}


def test_missing_root_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")


def test_empty_folder_names_the_path(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("no images")
    with pytest.raises(ValueError, match=rf"no image files .* found under {re.escape(str(tmp_path))}"):
        ImageFolderDataset(tmp_path, labelled=False)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        ImageFolderDataset(tmp_path, labelled=True)


def test_labelled_without_class_folders(tmp_path):
    _image(tmp_path / "loose.png")
    with pytest.raises(ValueError, match=r"no class sub-folders.*labelled=false"):
        ImageFolderDataset(tmp_path)


def test_eval_image_folder(tmp_path):
    _image(tmp_path / "a" / "x.png")
    assert eval_image_folder(None) is None
    assert eval_image_folder(tmp_path, enabled=False) is None
    ds = eval_image_folder(tmp_path)
    assert ds is not None and ds.classes == ["a"]
