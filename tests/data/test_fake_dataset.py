import numpy as np
import pytest

from sslvit.data import FakeDataset


def test_deterministic_per_index():
    a, b = FakeDataset(seed=3), FakeDataset(seed=3)
    assert np.array_equal(np.asarray(a[5][0]), np.asarray(b[5][0]))
    assert np.array_equal(np.asarray(a[5][0]), np.asarray(a[5][0]))
    assert not np.array_equal(np.asarray(a[5][0]), np.asarray(a[9][0]))  # same class, other image
    assert not np.array_equal(np.asarray(a[5][0]), np.asarray(FakeDataset(seed=4)[5][0]))


def test_shapes_and_labels():
    ds = FakeDataset(num_samples=10, image_size=20, num_classes=3)
    image, label = ds[4]
    assert (image.mode, image.size, label) == ("RGB", (20, 20), 1)
    assert ds.targets == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert len(ds.classes) == 3
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(ValueError, match="num_classes=0"):
        FakeDataset(num_classes=0)


def test_classes_are_separable_by_simple_features():
    """Nearest class-mean on mean colour classifies held-out images (another seed) almost perfectly."""
    train, val = FakeDataset(64, 32, 4, seed=0), FakeDataset(64, 32, 4, seed=1)

    def features(ds):
        return np.stack([np.asarray(ds[i][0], dtype=np.float64).mean(axis=(0, 1)) for i in range(len(ds))])

    train_x, val_x = features(train), features(val)
    centroids = np.stack([train_x[np.array(train.targets) == c].mean(0) for c in range(4)])
    predicted = np.argmin(((val_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == np.array(val.targets)).mean() >= 0.95
