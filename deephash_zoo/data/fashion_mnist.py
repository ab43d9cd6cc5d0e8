"""Fashion-MNIST from its idx files (gzipped or not), kept in memory as uint8.

The default folder is where Debian's ``dataset-fashion-mnist`` package puts them
(``apt-get install dataset-fashion-mnist``); any folder holding the original four files works. Off Debian,
``DEEPHASH_ALLOW_DOWNLOAD=1`` lets the default fall back to ``torchvision.datasets.FashionMNIST(download=True)``
into ``~/.cache/deephash-zoo/fashion-mnist`` (its ``FashionMNIST/raw/`` files, read by the same checked
reader); a copy already there is used without asking. Nothing is downloaded unless the user says so.
"""
import functools
import gzip
import os
import zlib
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

__all__ = ['FASHION_MNIST_CLASSES', 'DEFAULT_FASHION_MNIST_DIR', 'DOWNLOAD_ENV', 'download_dir', 'load_fashion_mnist',
           'read_idx']

DEFAULT_FASHION_MNIST_DIR = Path(os.environ.get('FASHION_MNIST_DIR', '/usr/share/datasets/fashion-mnist'))
DOWNLOAD_ENV = 'DEEPHASH_ALLOW_DOWNLOAD'  # 1: the default folder may fall back to a torchvision download
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
)
_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_UBYTE = 0x08


def download_dir() -> Path:
    """Where a torchvision download goes: ``$XDG_CACHE_HOME/deephash-zoo/fashion-mnist`` (``~/.cache`` default)."""
    cache = os.environ.get('XDG_CACHE_HOME') or str(Path.home() / '.cache')
    return Path(cache) / 'deephash-zoo' / 'fashion-mnist'


def _download_allowed() -> bool:
    return os.environ.get(DOWNLOAD_ENV, '') not in ('', '0')


def _has(root: Path, stem: str) -> bool:
    return any((root / name).is_file() for name in (stem + '.gz', stem))


def _torchvision_copy(split: str, allowed: bool) -> Optional[Path]:
    """The ``FashionMNIST/raw`` folder of a torchvision copy: one already downloaded, or (``allowed``) a new
    download by ``torchvision.datasets.FashionMNIST(download=True)``; None when neither."""
    raw = download_dir() / 'FashionMNIST' / 'raw'
    if all(_has(raw, stem) for stem in _FILES[split]):
        return raw
    if not allowed:
        return None
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(download_dir()), train=split == 'train', download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise FileNotFoundError(f'Fashion-MNIST: not in {DEFAULT_FASHION_MNIST_DIR} and the torchvision download into '
                                f'{download_dir()} failed ({e})') from e
    return raw


def _find(root: Path, stem: str) -> Path:
    for name in (stem + '.gz', stem):
        if (root / name).is_file():
            return root / name
    hint = (' (apt-get install dataset-fashion-mnist, pass the folder holding the files, or set '
            f'{DOWNLOAD_ENV}=1 to download it with torchvision into {download_dir()})')
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


def _read_idx_once(path: Path) -> np.ndarray:
    """``read_idx``, inflated once per process for the same file content (its path, size and CRC-32).

    Why: an experiment builds its data for every cell, and the training images take 0.2-0.3 s to inflate each
    time; the CRC of the stored bytes takes about a tenth of that and, unlike a modification time, changes
    with every rewrite however quick. The arrays are read-only (``np.frombuffer`` over bytes), so no caller
    can change the cached copy.
    """
    size = path.stat().st_size
    if size > MAX_IDX_BYTES:  # not cached: read_idx refuses a file over its limit from the header alone
        return read_idx(path)
    crc = 0
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            crc = zlib.crc32(block, crc)
    return _read_idx_cached(str(path.resolve()), size, crc)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, size: int, crc32: int) -> np.ndarray:
    return read_idx(path)


def load_fashion_mnist(split: str = 'train', root: Optional[Union[str, Path]] = None
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) uint8 and class labels (n,) int64 of the ``'train'`` or ``'test'`` split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if root is None:
        root = DEFAULT_FASHION_MNIST_DIR
        if not all(_has(root, stem) for stem in _FILES[split]):
            root = _torchvision_copy(split, _download_allowed()) or root
    root = Path(root)
    images = _read_idx_once(_find(root, _FILES[split][0]))
    labels = _read_idx_once(_find(root, _FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f'{root}: {split} images {images.shape} and labels {labels.shape} do not pair up')
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f'{root}: {split} labels outside 0..9')
    return images, labels.astype(np.int64)
