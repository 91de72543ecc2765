"""Images in a directory tree: class sub-folders (labelled) or any layout (unlabelled)."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from sslvit.data.array_io import check_scale
from sslvit.data.channels import check_in_chans
from sslvit.data.datasets.folder_scan import IMAGE_EXTENSIONS, FolderScan
from sslvit.data.image_io import UnreadableImageError, load_image

log = logging.getLogger(__name__)


class ImageFolderDataset:
    """A folder of images, ImageNet-style (``root/<class>/**/<image>``) or a flat / nested unlabelled pile.

    Files are found by extension (case-insensitive, :data:`IMAGE_EXTENSIONS`) and sorted, so the sample
    order, and hence the evaluation subsets, are the same on every machine. Symbolic links are followed,
    each real folder and file at most once (:class:`~sslvit.data.datasets.folder_scan.FolderScan`).
    Zero-byte files (interrupted downloads) are warned about at the scan (``num_empty_files``) and kept
    as samples that cannot be read: like a file that fails to decode, such a sample is returned as
    ``None`` (and warned about once) so one bad JPEG cannot stop an epoch; the training loader replaces
    it and counts it in the batch's ``num_skipped`` (logged as ``data/skipped_images``). A file with
    another channel count than ``in_chans`` is such a sample too.

    Pictures (JPEG, PNG, ...) are served as RGB (``in_chans=3``) or grey (``in_chans=1``) PIL images;
    array files (``.npy``, ``.tif``, ``.tiff``) with ``in_chans`` bands in any dtype, scaled to [0, 1]
    by ``scale`` (:mod:`~sslvit.data.array_io`), as ``(C, H, W)`` float tensors (8-bit grey / RGB ones
    as PIL images).

    Args:
        root: directory to scan.
        labelled: if True, each immediate sub-folder of ``root`` is a class (sorted names -> ids 0..C-1)
            and its images are found recursively; if False every image under ``root`` gets label -1.
        on_bad_image: ``"skip"`` (default: skip and count zero-byte and undecodable files, as above) or
            ``"fail"`` (raise on the first one, naming it: for curated data sets, where a bad file
            means a broken copy).
        decode_max_side: decode JPEGs at a reduced scale whose long side is still at least this
            (:func:`~sslvit.data.image_io.load_rgb`); None decodes in full. The DataModule asks for a
            copy with it (:meth:`with_decode_max_side`) when the transform shrinks every image to a
            long side anyway (``device_stage="crops"``).
        in_chans: channels of every sample (``data.in_chans``).
        scale: how array values become [0, 1]: ``dtype_max``, ``min_max``, ``percentile`` or ``none``
            (:data:`~sslvit.data.array_io.SCALE_RULES`).
        scale_percentiles: the (low, high) percentiles of ``scale="percentile"``.

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: no class sub-folders (labelled), images directly in a labelled root (they would
            belong to no class; the message names them), no image files or only empty ones, an
            unknown ``on_bad_image`` or ``scale``, or ``in_chans`` below 1.
        UnreadableImageError: with ``on_bad_image="fail"``, a zero-byte or undecodable file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labelled: bool = True,
        on_bad_image: str = "skip",
        decode_max_side: int | None = None,
        in_chans: int = 3,
        scale: str = "dtype_max",
        scale_percentiles: Sequence[float] = (1.0, 99.0),
    ) -> None:
        if on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.in_chans = check_in_chans(in_chans)
        self.scale, self.scale_percentiles = check_scale(scale, scale_percentiles)
        self.root = Path(root).expanduser()
        self.labelled = labelled
        self.on_bad_image = on_bad_image
        self.decode_max_side = decode_max_side
        self._empty: set[str] = set()
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise FileNotFoundError(f"image folder {self.root} {what}")
        self.classes: list[str] = []
        self.samples: list[tuple[str, int]] = []
        scan = FolderScan(data_root=os.path.realpath(self.root))
        if labelled:
            self.classes = sorted(e.name for e in os.scandir(self.root) if _is_visible_dir(e))
            if not self.classes:
                raise ValueError(
                    f"no class sub-folders in {self.root} (labelled=true expects root/<class>/<image>; "
                    "use labelled=false for a folder without classes)"
                )
            _refuse_images_outside_classes(self.root)
            scan.class_roots = {os.path.realpath(self.root / name): i for i, name in enumerate(self.classes)}
            for label, name in enumerate(self.classes):
                self._add(scan.images(str(self.root / name), label), label)
        else:
            self._add(scan.images(str(self.root), -1), -1)
        if not self.samples:
            raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        if len(self._empty) == len(self.samples):
            raise ValueError(f"all {len(self.samples)} image files under {self.root} are empty (zero bytes)")
        if self._empty:
            log.warning(
                "%d image files under %s are empty (zero bytes); each is skipped when drawn and counted "
                "in data/skipped_images",
                len(self._empty),
                self.root,
            )
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        self._warned: set[str] = set()

    @property
    def num_empty_files(self) -> int:
        """Zero-byte files (interrupted downloads) and dangling links found by the scan."""
        return len(self._empty)

    def _add(self, found: list[tuple[str, int]], label: int) -> None:
        for path, size in found:
            if size <= 0 and self.on_bad_image == "fail":
                raise UnreadableImageError(path, "empty file (data.on_bad_image=skip skips such files)")
            if size <= 0:
                self._empty.add(path)
            self.samples.append((path, label))

    def __len__(self) -> int:
        return len(self.samples)

    def with_decode_max_side(self, max_side: int) -> ImageFolderDataset:
        """This dataset (the same scanned files) decoding JPEGs down to ``max_side`` on the long side."""
        scaled = copy.copy(self)
        scaled.decode_max_side = int(max_side)
        return scaled

    def __getitem__(self, index: int) -> tuple[Image.Image | torch.Tensor, int] | None:
        path, label = self.samples[index]
        try:
            if path in self._empty:  # named as such: Pillow would only say it cannot identify the file
                raise UnreadableImageError(path, "empty file (zero bytes)")
            image = load_image(path, self.in_chans, self.decode_max_side, self.scale, self.scale_percentiles)
            return image, label
        except UnreadableImageError as exc:
            if self.on_bad_image == "fail":
                raise UnreadableImageError(
                    path, f"{exc.reason} (data.on_bad_image=skip skips such files)"
                ) from exc
            if path not in self._warned:  # once per file and worker process, not once per epoch
                self._warned.add(path)
                log.warning("skipping unreadable image: %s", exc)
            return None

    def __repr__(self) -> str:
        kind = f"{len(self.classes)} classes" if self.labelled else "unlabelled"
        size = f"{len(self)} images, in_chans={self.in_chans}"
        return f"ImageFolderDataset(root={str(self.root)!r}, {kind}, {size})"


def eval_image_folder(
    root: str | os.PathLike[str] | None,
    enabled: bool = True,
    on_bad_image: str = "skip",
    in_chans: int = 3,
    scale: str = "dtype_max",
    scale_percentiles: Sequence[float] = (1.0, 99.0),
) -> ImageFolderDataset | None:
    """A labelled :class:`ImageFolderDataset` for evaluation, or None when there is nothing to evaluate on.

    Lets a config write ``eval_val_set: {_target_: ...eval_image_folder, root: ${data.val_root}}`` with
    ``val_root: null`` by default, and switch evaluation off for unlabelled folders with
    ``enabled: ${data.labelled}`` (k-NN and linear probes need labels).
    """
    if root is None or not enabled:
        return None
    return ImageFolderDataset(
        root,
        labelled=True,
        on_bad_image=on_bad_image,
        in_chans=in_chans,
        scale=scale,
        scale_percentiles=scale_percentiles,
    )


def _refuse_images_outside_classes(root: Path) -> None:
    """Images directly in a labelled folder's root belong to no class: say so rather than drop them."""
    loose = sorted(
        e.name
        for e in os.scandir(root)
        if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and not _is_dir(e)
    )
    if loose:
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        raise ValueError(
            f"{len(loose)} images in {root} are in no class folder ({shown}): move them into "
            "root/<class>/, or use data.labelled=false to train on every image without labels"
        )


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_visible_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir()
