"""Data: datasets, multi-crop / evaluation transforms, collate functions and the LightningDataModule.

``SSLDataModule`` is imported lazily (PEP 562) so that building blocks living in this package, such as
mask generators, can be imported without pulling in Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sslvit.data.batch import CropSourceBatch, MaskedImageBatch, MultiCropBatch
from sslvit.data.collate import collate_eval, collate_multicrop, collate_views
from sslvit.data.datasets import FakeDataset, FashionMNIST, ImageFolderDataset, eval_image_folder
from sslvit.data.image_io import UnreadableImageError, load_rgb
from sslvit.data.transforms import BEiTTransform, EvalTransform, MultiCropTransform, SingleCropTransform

if TYPE_CHECKING:
    from sslvit.data.datamodule import SSLDataModule

__all__ = [
    "BEiTTransform",
    "CropSourceBatch",
    "EvalTransform",
    "FakeDataset",
    "FashionMNIST",
    "ImageFolderDataset",
    "MaskedImageBatch",
    "MultiCropBatch",
    "MultiCropTransform",
    "SSLDataModule",
    "SingleCropTransform",
    "UnreadableImageError",
    "collate_eval",
    "collate_multicrop",
    "collate_views",
    "eval_image_folder",
    "load_rgb",
]


def __getattr__(name: str) -> Any:
    if name == "SSLDataModule":
        from sslvit.data.datamodule import SSLDataModule

        return SSLDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
