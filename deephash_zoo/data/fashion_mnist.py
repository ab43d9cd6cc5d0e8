"""Fashion-MNIST from its idx files (gzipped or not), kept in memory as uint8.

The default folder is where Debian's ``dataset-fashion-mnist`` package puts them
(``apt-get install dataset-fashion-mnist``); any folder holding the original four files works.
"""
import gzip
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

__all__ = ['FASHION_MNIST_CLASSES', 'DEFAULT_FASHION_MNIST_DIR', 'load_fashion_mnist', 'read_idx']

DEFAULT_FASHION_MNIST_DIR = Path(os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist'))
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_UBYTE = 0x08


def _find(root: Path, stem: str) -> Path:
    for name in (stem + '.gz', stem):
        if (root / name).is_file():
            return root / name
    hint = ' (apt-get install dataset-fashion-mnist, or pass the folder holding the files)'
    raise FileNotFoundError(f'{root / (stem + ".gz")}: Fashion-MNIST file not found{hint}')


MAX_IDX_BYTES = 1 << 30  # 1 GiB: Fashion-MNIST's largest file holds 47 MB


def read_idx(path: Union[str, Path], max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read one idx file of unsigned bytes (the MNIST format), checking its header against its size.

    The header is read first: a file announcing more than ``max_bytes`` is refused before its data is read,
    and at most the announced size (plus one byte, to detect padding) is ever inflated, so a small gzip
    that expands to gigabytes costs no more memory than its header allows.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == '.gz' else open
    try:
        with opener(path, 'rb') as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != _IDX_UBYTE:
                raise ValueError(f'{path}: not an idx file of unsigned bytes (bad magic number)')
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f'{path}: truncated idx header')
            shape = tuple(int.from_bytes(dims[4 * i:4 + 4 * i], 'big') for i in range(ndim))
            expected = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if expected > max_bytes:
                raise ValueError(f'{path}: header says {shape} = {expected:,} bytes, over the {max_bytes:,}-byte '
                                 'limit of an idx file')
            data = f.read(expected + 1)
    except (OSError, EOFError) as e:  # gzip raises these for truncated or non-gzip files
        raise ValueError(f'{path}: unreadable idx file ({e})') from e
    if len(data) != expected:
        raise ValueError(f'{path}: truncated or padded idx data: header says {shape} = {expected} bytes, '
                         f'file holds {"more" if len(data) > expected else len(data)}')
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(split: str = 'train', root: Optional[Union[str, Path]] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and class labels (n,) int64 of the ``'train'`` or ``'test'`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else DEFAULT_FASHION_MNIST_DIR
    images = read_idx(_find(root, _FILES[split][0]))
    labels = read_idx(_find(root, _FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f'{root}: {split} images {images.shape} and labels {labels.shape} do not pair up')
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f'{root}: {split} labels outside 0..9')
    return images, labels.astype(np.int64)
