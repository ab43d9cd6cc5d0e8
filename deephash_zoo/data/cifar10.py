"""CIFAR-10 from its binary version (``cifar-10-batches-bin``, no pickle) and the field's three protocols.

Every deep hashing toolkit reports CIFAR-10 first. The protocols are DeepHash-pytorch's, drawn per class from
all 60,000 images (the five training batches and the test batch together) with a seeded permutation:

* ``cifar10``: 100 queries and 500 training images per class (1,000 / 5,000), database = the other 54,000;
* ``cifar10-1``: the same queries and training images, database = every non-query image (59,000; DPSH's
  setting);
* ``cifar10-2``: 1,000 queries and 5,000 training images per class (10,000 / 50,000), database = the
  training images (50,000).

``--data cifar10:DIR`` (or ``cifar10-1:DIR``, ``cifar10-2:DIR``) picks the protocol by name, as
DeepHash-pytorch's ``--dataset`` does. A record of the binary files is one label byte then 3,072 bytes: the
red, green and blue 32x32 planes.
"""
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

__all__ = ['CIFAR10_CLASSES', 'CIFAR10_PROTOCOLS', 'read_cifar10', 'cifar10_split']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
BATCH_FILES = tuple(f'data_batch_{i}.bin' for i in range(1, 6)) + ('test_batch.bin',)
_RECORD = 1 + 3 * 32 * 32

# name -> (queries per class, training images per class, database: 'rest' | 'rest+train' | 'train')
CIFAR10_PROTOCOLS: Dict[str, Tuple[int, int, str]] = {
    'cifar10': (100, 500, 'rest'),
    'cifar10-1': (100, 500, 'rest+train'),
    'cifar10-2': (1000, 5000, 'train'),
}


def _find_folder(root: Union[str, Path]) -> Path:
    root = Path(root)
    for folder in (root, root / 'cifar-10-batches-bin'):
        if all((folder / name).is_file() for name in BATCH_FILES):
            return folder
    missing = [name for name in BATCH_FILES if not (root / name).is_file()]
    raise FileNotFoundError(f'{root}: not the CIFAR-10 binary version (cifar-10-batches-bin); missing {missing}. '
                            'Download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html')


def read_cifar10(root: Union[str, Path]) -> Tuple[np.ndarray, np.ndarray]:
    """All 60,000 images ``(n, 32, 32, 3)`` uint8 and labels ``(n,)`` int64: the training batches, then the test
    batch. Each file's size and labels are checked; a bad file is named."""
    folder = _find_folder(root)
    images, labels = [], []
    for name in BATCH_FILES:
        path = folder / name
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0 or data.size % _RECORD:
            raise ValueError(f'{path}: {data.size:,} bytes is not a whole number of {_RECORD:,}-byte CIFAR-10 '
                             'records (label byte + 3,072 pixel bytes)')
        records = data.reshape(-1, _RECORD)
        if records[:, 0].max() >= len(CIFAR10_CLASSES):
            raise ValueError(f'{path}: label {int(records[:, 0].max())} outside 0..9')
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def cifar10_split(labels: np.ndarray, protocol: str, seed: int) -> Dict[str, np.ndarray]:
    """Sorted ``query`` / ``train`` / ``database`` indices of ``protocol``, drawn per class with ``seed``."""
    if protocol not in CIFAR10_PROTOCOLS:
        raise ValueError(f'unknown CIFAR-10 protocol {protocol!r}; known: {sorted(CIFAR10_PROTOCOLS)}')
    per_query, per_train, database = CIFAR10_PROTOCOLS[protocol]
    rng = np.random.default_rng(seed)
    query, train, rest = [], [], []
    for label in range(len(CIFAR10_CLASSES)):
        index = np.flatnonzero(labels == label)
        if len(index) < per_query + per_train:
            raise ValueError(f'{protocol} draws {per_query + per_train:,} images of each class; class {label} '
                             f'({CIFAR10_CLASSES[label]}) has {len(index):,}')
        index = index[rng.permutation(len(index))]
        query.append(index[:per_query])
        train.append(index[per_query:per_query + per_train])
        rest.append(index[per_query + per_train:])
    parts = {'rest': rest, 'rest+train': rest + train, 'train': train}[database]
    return {'query': np.sort(np.concatenate(query)), 'train': np.sort(np.concatenate(train)),
            'database': np.sort(np.concatenate(parts))}
