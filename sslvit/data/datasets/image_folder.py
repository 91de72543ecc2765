"""Images in a directory tree: class sub-folders (labelled) or any layout (unlabelled)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from PIL import Image

from sslvit.data.image_io import UnreadableImageError, load_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderDataset:
    """A folder of images, ImageNet-style (``root/<class>/**/<image>``) or a flat / nested unlabelled pile.

    Files are found by extension (case-insensitive, :data:`IMAGE_EXTENSIONS`) and sorted, so the sample
    order, and hence the evaluation subsets, are the same on every machine. Zero-byte files (interrupted
    downloads) are skipped while scanning and counted in ``num_skipped_at_scan``. A file that still fails
    to decode is returned as ``None`` (and warned about once) so one bad JPEG cannot stop an epoch; the
    collate function drops it and counts it in the batch's ``num_skipped``.

    Args:
        root: directory to scan.
        labelled: if True, each immediate sub-folder of ``root`` is a class (sorted names -> ids 0..C-1)
            and its images are found recursively; if False every image under ``root`` gets label -1.
        on_bad_image: ``"skip"`` (default: skip and count zero-byte and undecodable files, as above) or
            ``"fail"`` (raise on the first one, naming it: for curated data sets, where a bad file
            means a broken copy).
        decode_max_side: decode JPEGs at a reduced scale whose long side is still at least this
            (:func:`~sslvit.data.image_io.load_rgb`); None decodes in full. The DataModule sets it when
            the transform shrinks every image to a long side anyway (``crops_on_device``).

    Raises:
        FileNotFoundError: ``root`` does not exist or is not a directory.
        ValueError: no class sub-folders (labelled) or no image files were found, or an unknown
            ``on_bad_image``.
        UnreadableImageError: with ``on_bad_image="fail"``, a zero-byte or undecodable file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labelled: bool = True,
        on_bad_image: str = "skip",
        decode_max_side: int | None = None,
    ) -> None:
        if on_bad_image not in ("skip", "fail"):
            raise ValueError(f"on_bad_image must be 'skip' or 'fail', got {on_bad_image!r}")
        self.root = Path(root).expanduser()
        self.labelled = labelled
        self.on_bad_image = on_bad_image
        self.decode_max_side = decode_max_side
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise FileNotFoundError(f"image folder {self.root} {what}")
        self.classes: list[str] = []
        self.samples: list[tuple[str, int]] = []
        self.num_skipped_at_scan = 0
        if labelled:
            self.classes = sorted(e.name for e in os.scandir(self.root) if _is_visible_dir(e))
            if not self.classes:
                raise ValueError(
                    f"no class sub-folders in {self.root} (labelled=true expects root/<class>/<image>; "
                    "use labelled=false for a folder without classes)"
                )
            for label, name in enumerate(self.classes):
                self._scan(self.root / name, label)
        else:
            self._scan(self.root, -1)
        if not self.samples:
            raise ValueError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        if self.num_skipped_at_scan:
            log.warning("skipped %d zero-byte image files under %s", self.num_skipped_at_scan, self.root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        self._warned: set[str] = set()

    def _scan(self, directory: Path, label: int) -> None:
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    empty = os.path.getsize(path) == 0
                except OSError:  # dangling symlink: unreadable, count it like an empty file
                    empty = True
                if empty and self.on_bad_image == "fail":
                    raise UnreadableImageError(path, "empty file (data.on_bad_image=skip skips such files)")
                if empty:
                    self.num_skipped_at_scan += 1
                else:
                    found.append(path)
        self.samples.extend((path, label) for path in sorted(found))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        path, label = self.samples[index]
        try:
            return load_rgb(path, self.decode_max_side), label
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
        return f"ImageFolderDataset(root={str(self.root)!r}, {kind}, {len(self)} images)"


def eval_image_folder(
    root: str | os.PathLike[str] | None, enabled: bool = True, on_bad_image: str = "skip"
) -> ImageFolderDataset | None:
    """A labelled :class:`ImageFolderDataset` for evaluation, or None when there is nothing to evaluate on.

    Lets a config write ``eval_val_set: {_target_: ...eval_image_folder, root: ${data.val_root}}`` with
    ``val_root: null`` by default, and switch evaluation off for unlabelled folders with
    ``enabled: ${data.labelled}`` (k-NN and linear probes need labels).
    """
    if root is None or not enabled:
        return None
    return ImageFolderDataset(root, labelled=True, on_bad_image=on_bad_image)


def _is_visible_dir(entry: os.DirEntry[str]) -> bool:
    return not entry.name.startswith(".") and entry.is_dir()
