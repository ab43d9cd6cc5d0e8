"""DeepHash-style list files: ``relative/path.jpg 0 1 0 ...`` per line, the format of the NUS-WIDE,
MS-COCO and CIFAR-10 lists distributed with the DeepHash / HashNet code.

Paths are whitespace-free (as in those files); every error names the list file and its 1-based line, since
these files run to hundreds of thousands of lines.
"""
from pathlib import Path, PurePosixPath
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from .dataset import HashDataset

__all__ = ['load_list_file']

PathLike = Union[str, Path]


def _inside_root(rel: str) -> bool:
    """A listed path that stays under the image root: relative, no ``..`` part, no drive."""
    pure = PurePosixPath(rel.replace('\\', '/'))
    return not pure.is_absolute() and '..' not in pure.parts and ':' not in pure.parts[0]


def load_list_file(
        path: PathLike,
        image_root: Optional[PathLike] = None,
        check_images: bool = True,
        *,
        transform: Optional[Callable[..., Any]] = None,
        class_names: Optional[Sequence[str]] = None,
) -> HashDataset:
    """Read a list file into a file-backed :class:`HashDataset` (ids = the listed paths).

    ``image_root`` (default: the list file's folder) is what the listed paths are relative to;
    ``check_images`` stats every image now so a wrong root fails here rather than mid-training.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise FileNotFoundError(f'{path}: list file not found')
    try:
        text = path.read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: unreadable list file ({e})') from e

    paths: List[str] = []
    line_numbers: List[int] = []
    flat = bytearray()  # n * C bytes: the NUS-WIDE list is 269,648 x 81
    num_labels = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        rel, values = tokens[0], tokens[1:]
        if not values:
            raise ValueError(f'{path}:{lineno}: no labels after the image path {rel!r}')
        if not paths:
            num_labels = len(values)
        elif len(values) != num_labels:
            raise ValueError(f'{path}:{lineno}: {len(values)} labels, but line {line_numbers[0]} has {num_labels}')
        for col, tok in enumerate(values, start=2):
            if tok not in ('0', '1'):
                raise ValueError(f'{path}:{lineno}: label {tok!r} in column {col} is not 0 or 1')
        if not _inside_root(rel):
            raise ValueError(f'{path}:{lineno}: image path {rel!r} leaves the image root (absolute or with ..); '
                             'list files name images relative to --data-root')
        if check_images and not (root / rel).is_file():
            raise FileNotFoundError(f'{path}:{lineno}: image {rel} not found under {root}')
        flat.extend(tok == '1' for tok in values)
        paths.append(rel)
        line_numbers.append(lineno)
    if not paths:
        raise ValueError(f'{path}: empty list file (no image lines)')

    labels = np.frombuffer(flat, dtype=np.uint8).reshape(len(paths), num_labels)
    return HashDataset(labels, paths=paths, image_root=root, transform=transform,
                       ids=paths, class_names=class_names, source=path, line_numbers=line_numbers)
