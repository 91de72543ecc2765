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


def test_zero_byte_files_are_skipped_at_scan(tmp_path, caplog):
    _image(tmp_path / "cls" / "ok.png")
    (tmp_path / "cls" / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 1
    assert ds.num_skipped_at_scan == 1
    assert "1 zero-byte" in caplog.text


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
