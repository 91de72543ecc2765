"""Fashion-MNIST from its original idx files (as shipped by Debian's ``dataset-fashion-mnist``)."""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

ENV_VAR = "SSLVIT_FASHION_MNIST"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPE_UBYTE = 0x08


class FashionMNIST:
    """Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747): 60k train / 10k test 28x28 grey images.

    The idx files are decoded once into numpy arrays (cached per process, so the pretraining set and the
    k-NN bank built from the same split share one copy). Samples are returned as 28x28 PIL images: grey
    with ``in_chans=1``, RGB (grey replicated to 3 channels) with ``in_chans=3``, so that the same
    transforms and backbones as for photographs serve it.

    Args:
        root: folder holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. None searches the
            ``SSLVIT_FASHION_MNIST`` environment variable, then ``/usr/share/datasets/fashion-mnist``.
        split: ``"train"`` (60k) or ``"test"`` (10k).
        in_chans: 1 (grey, as stored) or 3 (grey replicated).

    Raises:
        FileNotFoundError: the files are not there; the message says how to install them.
        ValueError: unknown split, an ``in_chans`` other than 1 or 3, or a file is not a valid idx file.
    """

    classes: ClassVar[list[str]] = list(CLASSES)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: Literal["train", "test"] = "train",
        in_chans: int = 3,
    ):
        if split not in _PREFIX:
            raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
        if in_chans not in (1, 3):
            raise ValueError(
                f"Fashion-MNIST is grey: data.in_chans must be 1 or 3 (replicated), got {in_chans}"
            )
        self.in_chans = int(in_chans)
        self.split = split
        self.root = _find_root(root, _PREFIX[split])
        prefix = _PREFIX[split]
        self.images = _read_idx(*_stat_key(self.root, f"{prefix}-images-idx3-ubyte"))
        self.labels = _read_idx(*_stat_key(self.root, f"{prefix}-labels-idx1-ubyte"))
        if self.images.ndim != 3 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise ValueError(
                f"Fashion-MNIST files in {self.root} disagree: images {self.images.shape}, "
                f"labels {self.labels.shape}"
            )
        self.targets = self.labels.astype(np.int64).tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index])
        return (image if self.in_chans == 1 else image.convert("RGB")), int(self.labels[index])

    def __repr__(self) -> str:
        where = f"root={str(self.root)!r}, split={self.split!r}"
        return f"FashionMNIST({where}, {len(self)} images, in_chans={self.in_chans})"


def _find_root(root: str | os.PathLike[str] | None, prefix: str) -> Path:
    candidates = [Path(root).expanduser()] if root is not None else []
    if root is None:
        if os.environ.get(ENV_VAR):
            candidates.append(Path(os.environ[ENV_VAR]).expanduser())
        candidates.append(Path(DEFAULT_ROOT))
    for candidate in candidates:
        if _data_file(candidate, f"{prefix}-images-idx3-ubyte") is not None:
            return candidate
    searched = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"Fashion-MNIST {prefix}-*-ubyte.gz files not found in {searched}; install them with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass data.root=/path/to/fashion-mnist"
    )


def _data_file(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _stat_key(root: Path, stem: str) -> tuple[str, float, int]:
    path = _data_file(root, stem)
    if path is None:  # e.g. the images are there but the labels are not
        raise FileNotFoundError(f"Fashion-MNIST file {root / stem}.gz not found")
    stat = path.stat()
    return str(path), stat.st_mtime, stat.st_size


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, mtime: float, size: int) -> np.ndarray:
    """Decode an idx file (LeCun's MNIST format): magic (0, 0, dtype, ndim), big-endian dims, data.

    ``mtime`` and ``size`` are only part of the cache key, so a replaced file is read again.
    """
    del mtime, size
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_DTYPE_UBYTE:
        raise ValueError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {array.size} values, header says {shape}")
    return array.reshape(shape)  # read-only view: shared safely by every dataset using this file
