"""Datasets returning ``(PIL RGB image, int label)`` (label -1 when unlabelled), or None for a bad file."""

from sslvit.data.datasets.fake import FakeDataset
from sslvit.data.datasets.fashion_mnist import FashionMNIST
from sslvit.data.datasets.image_folder import IMAGE_EXTENSIONS, ImageFolderDataset, eval_image_folder

__all__ = ["IMAGE_EXTENSIONS", "FakeDataset", "FashionMNIST", "ImageFolderDataset", "eval_image_folder"]
