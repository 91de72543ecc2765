"""The real data configs compose, interpolate and instantiate (no top-level config needed)."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from sslvit.data import FashionMNIST, ImageFolderDataset, MultiCropTransform, SSLDataModule

CONF = str(Path(__file__).resolve().parents[2] / "conf")
HAVE_FASHION_MNIST = os.path.isfile("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _compose(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(overrides=list(overrides))


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("fake", (32, 16, 2)),
        ("fashion_mnist", (28, 14, 4)),
        ("folder", (224, 96, 10)),
        ("imagenet", (224, 96, 10)),
    ],
)
def test_compose_keys(name, sizes):
    data = _compose(f"+data={name}").data
    transform = data.transform
    assert (transform.global_crop_size, transform.local_crop_size, transform.num_local_crops) == sizes
    assert data.patch_size is None  # the backbone's: none composed here
    assert data.masking is None  # data/masking=none writes data.masking, not data.masking.masking
    assert data.eval_transform.size == transform.global_crop_size


@pytest.mark.parametrize(
    ("name", "patch_size"), [("fake", 16), ("fashion_mnist", 7), ("folder", 16), ("imagenet", 16)]
)
def test_crops_fit_the_default_backbones_patches(name, patch_size):
    """The data set's crops are whole patch grids of the backbone a default run composes with it."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"data={name}", "++data.root=/data"])
    transform = cfg.data.transform
    assert cfg.backbone.patch_size == cfg.data.patch_size == patch_size
    assert transform.global_crop_size % patch_size == transform.local_crop_size % patch_size == 0


def test_fake_instantiates_and_loads():
    dm = instantiate(_compose("+data=fake").data)
    assert isinstance(dm, SSLDataModule) and isinstance(dm.transform, MultiCropTransform)
    batch = next(iter(dm.train_dataloader()))
    assert batch.global_crops[0].shape == (8, 3, 32, 32) and len(batch.local_crops) == 2
    assert dm.num_classes == 4 and len(dm.eval_indices("val")) == 64


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_instantiates():
    dm = instantiate(_compose("+data=fashion_mnist").data)
    assert isinstance(dm.train_set, FashionMNIST) and dm.num_classes == 10
    assert (len(dm.eval_indices("train")), len(dm.eval_indices("val"))) == (10000, 2000)
    images, _, _ = next(iter(dm.eval_dataloader("val")))
    assert images.shape == (256, 3, 28, 28)


def test_folder_and_imagenet_instantiate(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (64, 48)).save(tmp_path / split / cls / "x.png")
    labelled = instantiate(_compose("+data=folder", f"data.root={tmp_path / 'train'}").data)
    assert isinstance(labelled.train_set, ImageFolderDataset) and not labelled.has_labels  # no val_root
    with_val = _compose(
        "+data=folder", f"data.root={tmp_path / 'train'}", f"data.val_root={tmp_path / 'val'}"
    )
    assert instantiate(with_val.data).num_classes == 2
    unlabelled = instantiate(_compose("+data=folder", f"data.root={tmp_path}", "data.labelled=false").data)
    assert len(unlabelled.train_set) == 4 and unlabelled.eval_sets == {"train": None, "val": None}
    imagenet = instantiate(_compose("+data=imagenet", f"data.root={tmp_path}").data)
    assert imagenet.num_classes == 2 and imagenet.transform.num_local_crops == 10
