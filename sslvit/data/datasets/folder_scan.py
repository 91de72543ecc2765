"""Find the image files of a directory tree: symlinks followed, every real directory visited once."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")


@dataclass
class FolderScan:
    """One scan of a data set's folders, shared by its class folders so nothing is found twice.

    Symbolic links are followed (data sets are often assembled from links), but a directory is entered
    only the first time its *real* path comes up, and a file is kept only the first time its real path
    does: a link back up the tree (``a/up -> ..``) or two links into each other neither repeat samples
    nor hang the scan. A link to the data set's root or one of its parents is not followed (it would
    bring in the whole tree again, or images from outside it), and with ``class_roots`` neither is a
    link from one class into another class's folder (those images belong to the class that holds them).

    Args:
        data_root: real path of the data set's folder.
        class_roots: real paths of the class folders (labelled data sets), else empty.
    """

    data_root: str
    class_roots: dict[str, int] = field(default_factory=dict)
    visited_dirs: set[str] = field(default_factory=set)
    seen_files: set[str] = field(default_factory=set)

    def images(self, top: str, label: int) -> list[tuple[str, int]]:
        """Sorted ``(path, size in bytes or -1 when it cannot be read)`` of the images under ``top``.

        Hidden entries (names starting with ``.``) are ignored. A folder that cannot be listed is
        warned about and skipped, as ``os.walk`` would.
        """
        found: list[tuple[str, int]] = []
        top_real = os.path.realpath(top)
        if top_real in self.visited_dirs or self._owner(top_real) not in (None, label):
            return found
        if top_real != self.data_root and self._encloses_root(top_real):  # a class folder linked to ..
            return found
        self.visited_dirs.add(top_real)
        stack = [(top, top_real)]
        while stack:
            directory, directory_real = stack.pop()
            try:
                with os.scandir(directory) as listing:
                    entries = list(listing)
            except OSError as err:
                log.warning("cannot list %s, its images are left out: %s", directory, err)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                # Only links need resolving: below a resolved folder, a plain entry's real path is known.
                is_link = entry.is_symlink()
                real = os.path.realpath(entry.path) if is_link else os.path.join(directory_real, entry.name)
                # Only links can lead out of this folder's class (a plain entry has its folder's owner),
                # so only they pay for the search through the class folders.
                if _is_dir(entry):
                    if self._may_enter(real, label, is_link):
                        self.visited_dirs.add(real)
                        stack.append((entry.path, real))
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and self._may_keep(real, label, is_link):
                    self.seen_files.add(real)
                    found.append((entry.path, _size(entry)))
        return sorted(found)

    def _may_enter(self, real: str, label: int, is_link: bool) -> bool:
        if real in self.visited_dirs:
            return False
        if is_link:
            return not self._encloses_root(real) and self._owner(real) in (None, label)
        # A plain folder below a linked one can still be another class's folder.
        return self.class_roots.get(real, label) == label

    def _encloses_root(self, real: str) -> bool:
        """Whether ``real`` is the data set's folder or one of its parents."""
        return (self.data_root + os.sep).startswith(real.rstrip(os.sep) + os.sep)

    def _may_keep(self, real: str, label: int, is_link: bool) -> bool:
        if real in self.seen_files:
            return False
        return not is_link or self._owner(real) in (None, label)

    def _owner(self, real: str) -> int | None:
        """The label of the class folder holding ``real``, or None when it is in none of them."""
        for root, label in self.class_roots.items():
            if real == root or real.startswith(root + os.sep):
                return label
        return None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()  # follows links; a dangling link is not a directory
    except OSError:
        return False


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_size  # follows links
    except OSError:  # a dangling link
        return -1
