import gzip
import os
import struct

import numpy as np
import pytest

from sslvit.data import FashionMNIST
from sslvit.data.datasets import fashion_mnist

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
HAVE_DEBIAN_FILES = os.path.isfile(os.path.join(DEBIAN_ROOT, "t10k-images-idx3-ubyte.gz"))


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_root(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 7]))
    return tmp_path


def test_parses_idx_files(tiny_root):
    ds = FashionMNIST(tiny_root, split="test")
    assert len(ds) == 2
    image, label = ds[1]
    assert (image.mode, image.size, label) == ("RGB", (28, 28), 7)
    pixels = np.asarray(image)
    # sample 1 starts at flat index 784 -> 784 % 256 = 16, then counts up along the row
    assert pixels[0, :3, 0].tolist() == [16, 17, 18]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    assert ds.targets == [3, 7]


def test_env_var_is_searched(tiny_root, monkeypatch):
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tiny_root))
    ds = FashionMNIST(split="test")  # the variable comes before the Debian default
    assert len(ds) == 2 and ds.root == tiny_root


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        FashionMNIST(tmp_path / "nope", split="train")
    assert str(tmp_path / "nope") in str(info.value) and "data.root=" in str(info.value)
    monkeypatch.setenv(fashion_mnist.ENV_VAR, str(tmp_path / "nope"))
    monkeypatch.setattr(fashion_mnist, "DEFAULT_ROOT", str(tmp_path / "nodefault"))
    with pytest.raises(FileNotFoundError, match="nodefault"):
        FashionMNIST(split="test")


def test_bad_split_and_corrupt_file(tiny_root):
    with pytest.raises(ValueError, match="split"):
        FashionMNIST(tiny_root, split="val")  # type: ignore[arg-type]
    (tiny_root / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + bytes(12))
    (tiny_root / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + bytes(4))
    with pytest.raises(ValueError, match="not an unsigned-byte idx file"):
        FashionMNIST(tiny_root, split="train")


@pytest.mark.skipif(not HAVE_DEBIAN_FILES, reason=f"Fashion-MNIST not installed at {DEBIAN_ROOT}")
def test_debian_files():
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 28, 28)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    image, label = train[0]
    assert (image.mode, image.size, label) == ("RGB", (28, 28), 9)  # the first image is an ankle boot
    assert train.classes[label] == "Ankle boot"
    assert FashionMNIST(split="train").images is train.images  # decoded once per process
