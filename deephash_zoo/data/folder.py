"""Class folders (the ImageFolder layout): ``DIR/<class>/**/<image>``, one subfolder per class, single-label.

The way most people keep their own labelled images. Classes are the subfolders' names in sorted order; images are
found recursively inside each class folder by suffix (:data:`~.images.IMAGE_SUFFIXES`), in sorted order, so the
same folder always gives the same items in the same order (the retrieval split is drawn over that order). Other
files, and hidden files and folders (``.DS_Store``, ``.git``), are skipped; images are opened only when read, by
the same path as list files' images (:func:`~.images.open_rgb`).
"""
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .dataset import HashDataset
from .images import IMAGE_SUFFIXES

__all__ = ['load_image_folder']

PathLike = Union[str, Path]


def _hidden(name: str) -> bool:
    return name.startswith('.')


def _class_folders(root: Path) -> List[str]:
    """The visible subfolders of ``root``, sorted; refuses a root with none."""
    if not root.is_dir():
        raise FileNotFoundError(f'{root}: no such folder (folder: data is one subfolder of images per class)')
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not _hidden(e.name))
    if not names:
        raise ValueError(f'{root}: no class folders; folder: data wants one subfolder of images per class')
    return names


def _images_in(folder: Path) -> List[str]:
    """Image files under ``folder`` (recursive, hidden files and folders skipped), as sorted POSIX paths
    relative to ``folder``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]  # prunes the walk
        rel = Path(dirpath).relative_to(folder)
        found += [(rel / f).as_posix() for f in filenames
                  if not _hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _refuse_aliases(root: Path, paths: List[str]) -> None:
    """One file reached twice (a link in another class folder) would be an item with two single labels, and a
    query could retrieve itself."""
    seen: Dict[Path, str] = {}
    for rel in paths:
        real = (root / rel).resolve()
        if real in seen:
            raise ValueError(f'{root}: {seen[real]} and {rel} are the same file; each image may appear once')
        seen[real] = rel


def _scan(root: Path) -> Tuple[List[str], List[str], List[int]]:
    """``(class names, image paths relative to root, class index per image)``; refuses an empty class folder."""
    classes = _class_folders(root)
    paths: List[str] = []
    labels: List[int] = []
    for index, name in enumerate(classes):
        found = _images_in(root / name)
        if not found:
            raise ValueError(f"{root}: class folder '{name}' holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                             'remove it or add its images')
        paths += [f'{name}/{rel}' for rel in found]
        labels += [index] * len(found)
    if len(classes) < 2:
        raise ValueError(f"{root}: only one class folder ('{classes[0]}'); retrieval needs at least 2 classes "
                         '(with one, every item is relevant to every query)')
    return classes, paths, labels


def load_image_folder(root: PathLike, *, transform: Optional[Callable[..., Any]] = None) -> HashDataset:
    """Class folders under ``root`` as a file-backed single-label :class:`HashDataset` (ids = paths relative to
    ``root``, class names = the folder names)."""
    root = Path(root)
    classes, paths, labels = _scan(root)
    _refuse_aliases(root, paths)
    return HashDataset(np.asarray(labels, dtype=np.int64), paths=paths, image_root=root, transform=transform,
                       ids=paths, class_names=classes, source=root)
