"""Retrieval protocols: which items are queries, which train the model, which form the database.

The papers' numbers are only comparable under their splits, so the splits are named presets with the
papers' counts (:data:`PROTOCOLS`), drawn uniformly at random from a seed. The papers (after DPSH / DHN)
sample NUS-WIDE queries and training images per class (e.g. 100 / 500 per concept for NUS-WIDE-21); the
counts here are theirs, the per-class stratification is not reproduced. Own data (``folder:DIR``, or a list file
whose label count matches no paper) is split by ``'own'``: a share of the items as queries, drawn from the seed
and the item count alone, so every command that rebuilds the split from the data name gets the same one.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Union

import numpy as np

from .cifar10 import CIFAR10_CLASSES, CIFAR10_PROTOCOLS, cifar10_split, read_cifar10
from .coco import load_coco
from .dataset import HashDataset
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .folder import load_image_folder
from .listfile import load_list_file
from .mosaic import compose_mosaic, mosaic_indices, quadrant_labels, quadrant_names

__all__ = ['MOSAIC_DATA', 'PROTOCOLS', 'Protocol', 'Split', 'build_retrieval_data', 'labels_survive_flip',
           'preset_name', 'split_protocol', 'absolute_data_name']

PathLike = Union[str, Path]
Transform = Optional[Callable[..., Any]]


@dataclass(frozen=True)
class Protocol:
    """Split counts of one benchmark. ``None`` counts mean "all that is left"."""

    num_query: int
    num_train: Optional[int]
    train_from: str = 'database'  # 'database': training images are database images (DATH); 'rest': disjoint
    num_database: Optional[int] = None
    map_topk: Optional[int] = None  # the mAP@K the papers report; None: rank the whole database
    description: str = ''
    mirror_safe: bool = True  # False: a label says where in the image a thing sits, so a flip would change it
    mosaic_filled: Optional[int] = None  # mosaics: tiles that hold an item, the rest black (None: every tile)
    query_share: Optional[float] = None  # queries as this share of the items, at least 1, num_query at most

    def query_count(self, num_items: int) -> int:
        """The number of queries over ``num_items`` items: ``num_query``, or ``query_share`` of them capped by it."""
        if self.query_share is None:
            return self.num_query
        return max(1, min(self.num_query, int(num_items * self.query_share)))


PROTOCOLS: Dict[str, Protocol] = {
    'nuswide21': Protocol(2100, 10500, 'database', None, 5000,
                          'ADMTH Table 1 (DPSH protocol): NUS-WIDE, 21 most frequent concepts (~195 K images); '
                          '2,100 queries, rest database, 10,500 training images from the database'),
    'nuswide81': Protocol(5000, 10000, 'database', None, 5000,
                          'DATH (DHN protocol): NUS-WIDE, 81 concepts (269,648 images); 5,000 queries, '
                          'rest database, 10,000 training images drawn from the database'),
    'coco': Protocol(5000, 10000, 'database', None, 5000,
                     'DATH / ADMTH: MS-COCO, 122,218 labelled images; 5,000 queries, 117,218 database, '
                     '10,000 training images drawn from the database'),
    'fashion-mnist': Protocol(10000, None, 'database', None, None,
                              'queries = the 10,000 test images; database = the 60,000 training images; train = '
                              'the training set (or a seeded subset of it by count)'),
    'mosaic': Protocol(1000, 5000, 'database', 20000, None,
                       '2x2 Fashion-MNIST mosaics (label = union of the 4 item classes): 1,000 query mosaics '
                       'from the test images, 20,000 database mosaics from the training images, 5,000 training '
                       'mosaics drawn from the database'),
    'mosaic-quadrant': Protocol(1000, 5000, 'database', 20000, None,
                                'the mosaic images with (tile, class) labels: 40 labels, two mosaics relevant when '
                                'the same class sits in the same tile (about a third of the pairs; random codes '
                                'score mAP@all ~0.34); ranked over the whole database', mirror_safe=False),
    'mosaic-pair': Protocol(2000, 5000, 'database', 20000, None,
                            '2x2 mosaics of two Fashion-MNIST items on two seeded tiles, the other two black, label = '
                            'union of their classes: about a third of the pairs relevant, without position in the '
                            'labels; 2,000 query mosaics from the test images, 20,000 database mosaics from the '
                            'training images, 5,000 training mosaics drawn from the database', mosaic_filled=2),
    'mosaic-single': Protocol(1000, None, 'database', 60000, None,
                              'one Fashion-MNIST item on a seeded tile of a black 2x2 canvas, label = its class: '
                              'items at the scale and in the places the mosaics show them, for pretraining a trunk '
                              'before a mosaic benchmark; 1,000 query canvases from the test images, 60,000 '
                              'database canvases from the training images, all of them trained on', mosaic_filled=1),
    'own': Protocol(5000, None, 'database', None, None,
                    'own data (folder:DIR, or a list:PATH whose label count matches no paper preset): a seeded 10% '
                    'of the items as queries (at least 1, at most 5,000), every other item in the database and '
                    'trained on; mAP over the whole database', query_share=0.1),
}
MOSAIC_DATA = tuple(name for name in PROTOCOLS if name.startswith('mosaic'))  # built by _build_mosaic
_LABEL_COUNT_PRESET = {21: 'nuswide21', 81: 'nuswide81', 80: 'coco'}
OWN = 'own'  # the split of own data


def preset_name(data: str, num_labels: int) -> Optional[str]:
    """The :data:`PROTOCOLS` entry that splits ``data`` (a ``--data`` name) with ``num_labels`` label columns, as
    :func:`build_retrieval_data` picks it; None for CIFAR-10, whose protocols live in :mod:`.cifar10`."""
    if data in PROTOCOLS:
        return data
    kind = data.split(':', 1)[0]
    if kind == 'folder':
        return OWN
    if kind == 'coco':
        return 'coco'
    if kind == 'list':
        return _LABEL_COUNT_PRESET.get(num_labels, OWN)
    return None


PATH_DATA = ('list', 'coco', 'folder', *CIFAR10_PROTOCOLS)  # data names KIND:PATH that hold a local path


def absolute_data_name(data: str) -> str:
    """``data`` with its local path made absolute (``list:big/x.txt`` -> ``list:/home/me/big/x.txt``): what a run
    records, so that deephash-eval, -index and -export, which rebuild the split from it, find the data from any
    working folder. Other names are returned as they are."""
    import os

    kind, sep, path = data.partition(':')
    if sep and kind in PATH_DATA and path and not os.path.isabs(path):
        return f'{kind}:{os.path.abspath(path)}'
    return data


def labels_survive_flip(data: str) -> bool:
    """Whether a horizontal flip keeps an item's labels true. Not for ``mosaic-quadrant``, whose labels name
    the tile a class sits in (a flip swaps the left and right tiles); a list or COCO file is taken as safe."""
    preset = PROTOCOLS.get(data)
    return preset is None or preset.mirror_safe


class Split(NamedTuple):
    """Sorted index arrays into the dataset; query and database are disjoint."""

    query: np.ndarray
    train: np.ndarray
    database: np.ndarray


def _check_count(name: str, count: Optional[int]) -> None:
    if count is not None and (not isinstance(count, (int, np.integer)) or count < 0):
        raise ValueError(f'{name} must be a non-negative integer, got {count!r}')


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int, name: str, what: str) -> np.ndarray:
    if count > len(pool):
        raise ValueError(f'{name}={count:,} but only {len(pool):,} {what}')
    return np.sort(rng.choice(pool, count, replace=False)).astype(np.int64)


def split_protocol(
        num_items: int,
        num_query: int,
        num_train: Optional[int],
        seed: int,
        train_from: str = 'database',
        query_pool: Optional[Sequence[int]] = None,
        num_database: Optional[int] = None,
) -> Split:
    """Draw query / train / database indices over ``num_items`` items, deterministic from ``seed``.

    Queries come from ``query_pool`` (default: all items); the database is every other item, or a seeded
    sample of ``num_database`` of them. ``train_from='database'`` draws ``num_train`` training items from the
    database (``None``: the whole database), as DATH's protocol does; ``'rest'`` draws them from the
    non-query items first and keeps them out of the database.
    """
    for name, count in (('num_items', num_items), ('num_query', num_query), ('num_train', num_train),
                        ('num_database', num_database)):
        _check_count(name, count)
    if train_from not in ('database', 'rest'):
        raise ValueError(f"train_from must be 'database' or 'rest', got {train_from!r}")
    if train_from == 'rest' and num_train is None:
        raise ValueError("train_from='rest' needs a num_train count")
    rng = np.random.default_rng(seed)
    if query_pool is None:
        pool = np.arange(num_items, dtype=np.int64)
    else:
        pool = np.asarray(query_pool, dtype=np.int64).reshape(-1)
        if pool.size and (pool.min() < 0 or pool.max() >= num_items):
            raise ValueError(f'query_pool indices must lie in 0..{num_items - 1}')
        pool = np.unique(pool)
    query = _draw(rng, pool, num_query, 'num_query', 'items can be queries')
    rest = np.setdiff1d(np.arange(num_items, dtype=np.int64), query)
    train = None
    if train_from == 'rest':
        train = _draw(rng, rest, int(num_train), 'num_train', f'items left after {num_query:,} queries')
        rest = np.setdiff1d(rest, train)
    database = rest if num_database is None else _draw(rng, rest, num_database, 'num_database', 'items left')
    if not len(database):
        raise ValueError(f'no items left for the database ({num_items:,} items, {num_query:,} queries)')
    if train is None:
        train = database if num_train is None else _draw(rng, database, num_train, 'num_train',
                                                          'database items to train on')
    return Split(query, train, database)


# ------------------------------------------------------------------------------------------------ builders
def _fashion_mnist_sets(root: Optional[PathLike]) -> Dict[str, tuple]:
    return {split: load_fashion_mnist(split, root) for split in ('train', 'test')}


def _build_fashion_mnist(root: Optional[PathLike], seed: int, subset: Optional[int], preset: Protocol,
                         num_query: Optional[int], num_train: Optional[int]) -> Dict[str, HashDataset]:
    src = _fashion_mnist_sets(root)
    sets = {split: HashDataset(labels, images=images, class_names=FASHION_MNIST_CLASSES,
                               ids=[f'{split}/{i}' for i in range(len(labels))])
            for split, (images, labels) in src.items()}
    nq = preset.num_query if num_query is None else num_query
    rng = np.random.default_rng(seed)
    query = _draw(rng, np.arange(len(sets['test'])), nq, 'num_query', 'Fashion-MNIST test images')
    db = np.arange(len(sets['train']))
    if subset is not None:
        db = _draw(rng, db, subset, 'subset', 'Fashion-MNIST training images')
    train = db if num_train is None else _draw(rng, db, num_train, 'num_train', 'database images to train on')
    return {'train': sets['train'].subset(train), 'query': sets['test'].subset(query),
            'database': sets['train'].subset(db)}


def _mosaic_set(images: np.ndarray, labels: np.ndarray, n: int, seed: Sequence[int], grid: int, split: str,
                quadrants: bool = False, filled: Optional[int] = None) -> HashDataset:
    index = mosaic_indices(len(images), n, seed, grid, filled)
    tiles, multi_hot = compose_mosaic(images, labels, index, len(FASHION_MNIST_CLASSES))
    names = FASHION_MNIST_CLASSES
    if quadrants:  # same images, (tile, class) labels
        multi_hot = quadrant_labels(labels, index, len(FASHION_MNIST_CLASSES))
        names = quadrant_names(FASHION_MNIST_CLASSES, grid)
    # which source items, for manifests ('-': a blank tile)
    ids = [f'{split}:' + '+'.join(str(i) if i >= 0 else '-' for i in row) for row in index.tolist()]
    return HashDataset(multi_hot, images=tiles, class_names=names, ids=ids, single_label=filled == 1 and not quadrants)


def _build_mosaic(root: Optional[PathLike], seed: int, subset: Optional[int], preset: Protocol,
                  num_query: Optional[int], num_train: Optional[int], grid: int) -> Dict[str, HashDataset]:
    nq = preset.num_query if num_query is None else num_query
    ndb = int(subset if subset is not None else preset.num_database or 0)
    ntr = num_train if num_train is not None else ndb if preset.num_train is None else min(preset.num_train, ndb)
    if not ndb:
        raise ValueError('the mosaic database needs at least one mosaic')
    if ntr > ndb:
        raise ValueError(f'num_train={ntr:,} but only {ndb:,} database mosaics to train on')
    src = _fashion_mnist_sets(root)
    quadrants = preset is PROTOCOLS['mosaic-quadrant']
    query = _mosaic_set(*src['test'], nq, (seed, 1), grid, 'test', quadrants, preset.mosaic_filled)
    database = _mosaic_set(*src['train'], ndb, (seed, 2), grid, 'train', quadrants, preset.mosaic_filled)
    train = database.subset(_draw(np.random.default_rng((seed, 3)), np.arange(ndb), ntr, 'num_train', 'mosaics'))
    return {'train': train, 'query': query, 'database': database}


def _build_cifar10(root: str, seed: int, subset: Optional[int], protocol: str,
                   num_query: Optional[int], num_train: Optional[int]) -> Dict[str, HashDataset]:
    if num_query is not None or num_train is not None:
        raise ValueError(f'{protocol}: the protocols fix the query and training counts per class; choose one by '
                         f'the data name ({", ".join(sorted(CIFAR10_PROTOCOLS))}:DIR) and cap the database with '
                         'subset=')
    images, labels = read_cifar10(root)
    split = cifar10_split(labels, protocol, seed)
    database = split['database']
    if subset is not None:
        database = _draw(np.random.default_rng((seed, 4)), database, subset, 'subset', 'CIFAR-10 database images')
    dataset = HashDataset(labels, images=images, class_names=CIFAR10_CLASSES,
                          ids=[f'{"train" if i < 50_000 else "test"}/{i % 50_000}' for i in range(len(labels))])
    return {key: dataset.subset(index) for key, index in
            (('train', split['train']), ('query', split['query']), ('database', database))}


def _load_files(name: str, root: Optional[PathLike], check_images: bool) -> HashDataset:
    """The dataset behind a ``list:`` / ``coco:`` / ``folder:`` name."""
    kind, path = name.split(':', 1)
    if kind == 'list':
        return load_list_file(path, root, check_images)
    if kind == 'folder':
        if root is not None:
            raise ValueError(f'{name}: the folder holds the images itself; root= (--data-root) is for list: and '
                             'coco: data')
        return load_image_folder(path)
    if root is None:
        raise ValueError(f'{name}: pass root= the folder holding the images of {Path(path).name}')
    return load_coco(path, root)


def _preset_for(dataset: HashDataset, protocol: Optional[str], name: str) -> str:
    """The preset's name: ``protocol`` if given, else the data name's (a list file's by its label count)."""
    protocol = protocol or preset_name(name, dataset.num_classes)
    if protocol not in PROTOCOLS:
        raise ValueError(f'unknown protocol {protocol!r}; known: {sorted(PROTOCOLS)}')
    return protocol


def _refuse_one_class(dataset: HashDataset, name: str) -> None:
    """Own data needs two classes: with one, every item is relevant to every query (the triplet term is always
    0 and mAP is 1.0 whatever the codes)."""
    used = np.flatnonzero(dataset.labels.any(0))
    if len(used) >= 2:
        return
    names = dataset.class_names or [f'label column {i + 2}' for i in range(dataset.num_classes)]
    which = f"only {names[used[0]]!r} has items" if len(used) else 'no item has a label'
    raise ValueError(f'{name}: {which}; retrieval needs items of at least 2 classes (with one, every item is '
                     'relevant to every query and mAP is 1.0 whatever the codes)')


def _refuse_too_small(dataset: HashDataset, preset: str, needed: int, name: str) -> None:
    """A list put on a paper's preset by its label count, but too short for the paper's counts."""
    if len(dataset) >= needed:
        return
    raise ValueError(f"{name}: {dataset.num_classes} label columns put it on the paper preset {preset!r}, which needs "
                     f"at least {needed:,} items; the list has {len(dataset):,}. Own data (folder:DIR, or a list "
                     f"whose label count is not 21, 80 or 81) gets the '{OWN}' split; in Python, "
                     f"build_retrieval_data(..., protocol='{OWN}') puts any list on it")


def _build_from_files(name: str, root: Optional[PathLike], seed: int, subset: Optional[int],
                      protocol: Optional[str], num_query: Optional[int], num_train: Optional[int],
                      check_images: bool) -> Dict[str, HashDataset]:
    """List, COCO and folder data: one dataset of files, split by its preset (own data: refused with fewer than
    two classes; a list on a paper preset: refused, saying what to do, when too short for the paper's counts)."""
    dataset = _load_files(name, root, check_images)
    chosen = _preset_for(dataset, protocol, name)
    preset = PROTOCOLS[chosen]
    nq = preset.query_count(len(dataset)) if num_query is None else num_query
    ntr = preset.num_train if num_train is None else num_train
    if subset is not None and num_train is None and ntr is not None:
        ntr = min(ntr, subset)
    if chosen == OWN:
        _refuse_one_class(dataset, name)
    elif protocol is None and name.startswith('list:') and num_query is None and num_train is None:
        _refuse_too_small(dataset, chosen, nq + (ntr or 1), name)
    split = split_protocol(len(dataset), nq, ntr, seed, preset.train_from, num_database=subset)
    return {'train': dataset.subset(split.train), 'query': dataset.subset(split.query),
            'database': dataset.subset(split.database)}


def build_retrieval_data(
        name: str,
        root: Optional[PathLike] = None,
        seed: int = 0,
        subset: Optional[int] = None,
        *,
        protocol: Optional[str] = None,
        num_query: Optional[int] = None,
        num_train: Optional[int] = None,
        transform: Transform = None,
        train_transform: Transform = None,
        check_images: bool = True,
        grid: int = 2,
) -> Dict[str, HashDataset]:
    """``{'train', 'query', 'database'}`` datasets of a benchmark, split by its preset and ``seed``.

    ``name``: ``'fashion-mnist'``, ``'mosaic'`` (``root`` = the Fashion-MNIST folder), ``'list:PATH'`` (a DeepHash
    list file; ``root`` = image root, default its folder; preset from ``protocol`` or the label count: 21 / 81 / 80
    columns -> nuswide21 / nuswide81 / coco, any other -> ``'own'``), ``'folder:DIR'`` (one subfolder of images
    per class, see :mod:`.folder`; split by ``'own'``), ``'cifar10:DIR'``, ``'cifar10-1:DIR'``, ``'cifar10-2:DIR'`` (the
    binary version, split by DeepHash-pytorch's protocol of that name, see :mod:`.cifar10`) or ``'coco:PATH'`` (an
    instances json; ``root`` = its image folder, required). ``subset`` caps the database at a seeded sample of that
    size for quick runs (mosaic: the number of database mosaics); the training count then shrinks to fit unless
    ``num_train`` is given. ``num_query`` / ``num_train`` override the preset. ``transform`` applies to all three
    sets, ``train_transform`` (default: ``transform``) to the training set.
    """
    for arg, value in (('subset', subset), ('num_query', num_query), ('num_train', num_train)):
        _check_count(arg, value)
    if name == 'fashion-mnist':
        out = _build_fashion_mnist(root, seed, subset, PROTOCOLS[name], num_query, num_train)
    elif name in MOSAIC_DATA:
        out = _build_mosaic(root, seed, subset, PROTOCOLS[name], num_query, num_train, grid)
    elif name.split(':', 1)[0] in CIFAR10_PROTOCOLS and ':' in name:
        kind, path = name.split(':', 1)
        if protocol not in (None, kind):
            raise ValueError(f'{name}: the data name sets protocol {kind!r}; got protocol={protocol!r} too')
        out = _build_cifar10(path, seed, subset, kind, num_query, num_train)
    elif name.startswith(('list:', 'coco:', 'folder:')):
        out = _build_from_files(name, root, seed, subset, protocol, num_query, num_train, check_images)
    else:
        raise ValueError(f"unknown data {name!r}: use 'fashion-mnist', {', '.join(map(repr, MOSAIC_DATA))}, "
                         "'cifar10[-1|-2]:DIR', 'folder:DIR', 'list:PATH' or 'coco:PATH'")
    for key, ds in out.items():
        ds.transform = train_transform if key == 'train' and train_transform is not None else transform
    return out
