"""One dataset class for every source: in-memory uint8 images or image files, with multi-hot labels.

Hashing losses and the retrieval metrics compare label vectors (relevance = share at least one label), so
every source, single-label ones included, is stored as a multi-hot ``uint8`` matrix; ``single_label`` and
:meth:`HashDataset.class_indices` give back the class index where a loss wants it.
"""
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import ImageRejected, open_rgb

__all__ = ['HashDataset', 'to_multi_hot']

PathLike = Union[str, Path]


def to_multi_hot(labels: Any, num_classes: Optional[int] = None) -> Tuple[np.ndarray, bool]:
    """``(multi-hot uint8 (n, C), given_as_indices)`` from class indices ``(n,)`` or a 0/1 matrix ``(n, C)``."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f'class-index labels must be integers, got dtype {labels.dtype}')
        top = int(labels.max()) + 1 if labels.size else 0
        num_classes = top if num_classes is None else num_classes
        if labels.size and (labels.min() < 0 or top > num_classes):
            raise ValueError(f'class indices must lie in 0..{num_classes - 1}, got {labels.min()}..{top - 1}')
        out = np.zeros((len(labels), num_classes), dtype=np.uint8)
        out[np.arange(len(labels)), labels.astype(np.int64)] = 1
        return out, True
    if labels.ndim != 2:
        raise ValueError(f'labels must be class indices (n,) or multi-hot (n, C), got shape {labels.shape}')
    if num_classes is not None and labels.shape[1] != num_classes:
        raise ValueError(f'labels have {labels.shape[1]} columns, expected {num_classes} classes')
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError('multi-hot labels must be 0 or 1')
    return labels.astype(np.uint8, copy=False), False


class HashDataset(Dataset):
    """Images (a uint8 array or files under a root) with multi-hot labels, returned as ``(image, label)``.

    ``image`` is ``transform(PIL RGB image)`` (grayscale is converted to RGB so every timm model's transform
    applies), or the uint8 CHW tensor without a transform. ``label`` is a float32 vector (the losses take
    float targets). :meth:`subset` shares the image storage, so protocol splits cost no image memory.
    """

    def __init__(
            self,
            labels: Any,
            *,
            images: Optional[np.ndarray] = None,
            paths: Optional[Sequence[str]] = None,
            image_root: Optional[PathLike] = None,
            transform: Optional[Callable[[Image.Image], Any]] = None,
            ids: Optional[Sequence[str]] = None,
            num_classes: Optional[int] = None,
            class_names: Optional[Sequence[str]] = None,
            single_label: Optional[bool] = None,
            source: Optional[PathLike] = None,
            line_numbers: Optional[Sequence[int]] = None,
            num_dropped: int = 0,
    ) -> None:
        """``labels``: class indices (n,) or multi-hot (n, C). Exactly one of ``images`` (uint8 (n, H, W) or
        (n, H, W, 3)) and ``paths`` (relative to ``image_root``). ``single_label`` defaults to "given as class
        indices, or every row has exactly one label". ``source`` and ``line_numbers`` (1-based, one per item)
        say where an item was listed, for error messages; ``num_dropped`` counts items the loader left out."""
        if (images is None) == (paths is None):
            raise ValueError('give exactly one of images (a uint8 array) or paths (image files)')
        if class_names is not None and num_classes is None:
            num_classes = len(class_names)
        self.labels, as_indices = to_multi_hot(labels, num_classes)
        n = len(self.labels)
        if images is not None:
            images = np.asarray(images)
            if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
                raise ValueError(f'images must be uint8 (n, H, W) or (n, H, W, 3), got {images.dtype} {images.shape}')
            count = len(images)
        else:
            paths = list(paths)
            count = len(paths)
        if count != n:
            raise ValueError(f'{count} images but {n} label rows')
        for name, seq in (('ids', ids), ('line_numbers', line_numbers)):
            if seq is not None and len(seq) != n:
                raise ValueError(f'{len(seq)} {name} for {n} items')
        if class_names is not None and len(class_names) != self.labels.shape[1]:
            raise ValueError(f'{len(class_names)} class names for {self.labels.shape[1]} classes')
        if single_label is None:
            single_label = as_indices or bool(n and (self.labels.sum(1) == 1).all())
        self._images = images
        self._paths = paths
        self._index: Optional[np.ndarray] = None  # rows of the shared image storage; None = all, in order
        self.image_root = Path(image_root) if image_root is not None else None
        self.transform = transform
        self.ids = list(ids) if ids is not None else None
        self.class_names = tuple(class_names) if class_names is not None else None
        self.single_label = bool(single_label)
        self.source = Path(source) if source is not None else None
        self.line_numbers = list(line_numbers) if line_numbers is not None else None
        self.num_dropped = int(num_dropped)

    # ------------------------------------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    @property
    def in_memory(self) -> bool:
        """True for uint8 arrays, False for image files."""
        return self._images is not None

    def __repr__(self) -> str:
        kind = 'in-memory' if self.in_memory else f'files under {self.image_root}'
        labels = 'single-label' if self.single_label else 'multi-label'
        return f'HashDataset({len(self)} items, {kind}, {self.num_classes} classes, {labels})'

    def class_indices(self) -> np.ndarray:
        """Class index per item (n,) int64, for losses that take indices; only for single-label data."""
        if not self.single_label:
            raise ValueError('class_indices() needs single-label data; this dataset is multi-label')
        return self.labels.argmax(1).astype(np.int64)

    # ------------------------------------------------------------------------------------------------ items
    def _row(self, i: int) -> int:
        return int(self._index[i]) if self._index is not None else i

    def image_path(self, i: int) -> Path:
        """The file of item ``i`` (file-backed datasets only)."""
        if self._paths is None:
            raise ValueError('this dataset holds in-memory images, not files')
        rel = self._paths[self._row(i)]
        return self.image_root / rel if self.image_root is not None else Path(rel)

    def load_image(self, i: int) -> Image.Image:
        """Item ``i`` as a PIL RGB image; a file that fails to open raises ValueError naming it."""
        if self._images is not None:
            return Image.fromarray(self._images[self._row(i)]).convert('RGB')
        path = self.image_path(i)
        try:
            return open_rgb(path)
        except ImageRejected as e:
            where = f'listed at {self.source}:{self.line_numbers[i]}: ' if self.line_numbers is not None else ''
            raise ImageRejected(f'{where}{e}') from None

    def __getitem__(self, i: int) -> Tuple[Any, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f'index {i} out of range for {len(self)} items')
        i = int(i) % len(self)
        img = self.load_image(i)
        if self.transform is not None:
            image = self.transform(img)
        else:
            image = torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy())
        return image, torch.from_numpy(self.labels[i].astype(np.float32))

    # ------------------------------------------------------------------------------------------------ views
    def subset(self, indices: Any) -> 'HashDataset':
        """The items at ``indices`` (in that order), sharing this dataset's image storage and transform."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f'subset indices must lie in 0..{len(self) - 1}, got {idx.min()}..{idx.max()}')
        out = self._copy()
        out._index = idx if self._index is None else self._index[idx]
        out.labels = self.labels[idx]
        out.ids = [self.ids[j] for j in idx] if self.ids is not None else None
        out.line_numbers = [self.line_numbers[j] for j in idx] if self.line_numbers is not None else None
        return out

    def with_transform(self, transform: Optional[Callable[[Image.Image], Any]]) -> 'HashDataset':
        """The same items with another transform (e.g. training augmentation for the train split)."""
        out = self._copy()
        out.transform = transform
        return out

    def _copy(self) -> 'HashDataset':
        out = object.__new__(HashDataset)
        out.__dict__.update(self.__dict__)
        return out

    def image_array(self) -> np.ndarray:
        """The uint8 images of this (sub)set as one array (in-memory datasets only; copies for subsets)."""
        if self._images is None:
            raise ValueError('this dataset holds image files, not an in-memory array')
        return self._images if self._index is None else self._images[self._index]

    def relative_paths(self) -> List[str]:
        """The image paths as listed (relative to ``image_root``), file-backed datasets only."""
        if self._paths is None:
            raise ValueError('this dataset holds in-memory images, not files')
        return list(self._paths) if self._index is None else [self._paths[j] for j in self._index]
