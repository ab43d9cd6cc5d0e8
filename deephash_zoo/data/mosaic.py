"""The multi-label mosaic benchmark: grids of Fashion-MNIST items, label = union of their classes.

NUS-WIDE and MS-COCO are multi-label and not installable offline; a 2x2 mosaic of Fashion-MNIST items has
one to four labels, so the multi-label losses and the "share at least one label" relevance get exercised
on real pixels with data we do have. Deterministic from the seed.
"""
from typing import Any, Sequence, Tuple, Union

import numpy as np

from .dataset import to_multi_hot

__all__ = ['compose_mosaic', 'make_mosaic', 'mosaic_indices', 'quadrant_labels', 'quadrant_names']

Seed = Union[int, Sequence[int]]


def mosaic_indices(num_source: int, n: int, seed: Seed, grid: int = 2) -> np.ndarray:
    """Source item of each tile, ``(n, grid * grid)`` int64, tiles in row-major order; drawn with replacement."""
    if num_source <= 0:
        raise ValueError('mosaics need at least one source image')
    if n < 0 or grid < 1:
        raise ValueError(f'need n >= 0 and grid >= 1, got n={n}, grid={grid}')
    return np.random.default_rng(seed).integers(0, num_source, size=(n, grid * grid), dtype=np.int64)


def compose_mosaic(images: np.ndarray, labels: Any, index: np.ndarray, num_classes: int = 10
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Tile ``images[index[k]]`` into one image per row of ``index`` and OR their labels together."""
    images = np.asarray(images)
    multi_hot, _ = to_multi_hot(labels, num_classes)
    if len(multi_hot) != len(images):
        raise ValueError(f'{len(images)} images but {len(multi_hot)} labels')
    n, tiles = index.shape
    grid = int(round(tiles ** 0.5))
    if grid * grid != tiles:
        raise ValueError(f'index must have grid*grid columns, got {tiles}')
    h, w = images.shape[1:3]
    rest = images.shape[3:]
    tiled = images[index].reshape((n, grid, grid, h, w) + rest)
    tiled = tiled.transpose((0, 1, 3, 2, 4) + tuple(range(5, 5 + len(rest))))
    return np.ascontiguousarray(tiled.reshape((n, grid * h, grid * w) + rest)), multi_hot[index].max(axis=1)


def quadrant_labels(labels: np.ndarray, index: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """(class, tile position) multi-hot labels ``(n, tiles * num_classes)``: label ``tile * num_classes + class``.

    The union-of-classes labelling relates 81% of mosaic pairs (random codes already score mAP@100 0.82), so a
    model that knows one tile's class looks perfect; this one relates two mosaics only when the same class sits in
    the same tile, about a third of the pairs, and a model must place each item to rank well.
    """
    classes = np.asarray(labels)[index]  # (n, tiles) class of each tile
    if classes.ndim != 2:
        raise ValueError('quadrant labels need one class index per source item')
    n, tiles = classes.shape
    out = np.zeros((n, tiles * num_classes), dtype=np.uint8)
    out[np.arange(n)[:, None], np.arange(tiles)[None, :] * num_classes + classes] = 1
    return out


def quadrant_names(class_names: Sequence[str], grid: int = 2) -> Tuple[str, ...]:
    """Names of the (tile, class) labels, tiles in row-major order: 'top-left T-shirt/top', ..."""
    where = ['top-left', 'top-right', 'bottom-left', 'bottom-right'] if grid == 2 else \
        [f'tile {i}' for i in range(grid * grid)]
    return tuple(f'{w} {c}' for w in where for c in class_names)


def make_mosaic(images: np.ndarray, labels: Any, n: int, seed: Seed, grid: int = 2, num_classes: int = 10
                ) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` mosaics ``uint8 (n, 28*grid, 28*grid)`` and their multi-hot labels ``(n, num_classes)``.

    ``labels`` are class indices (n,) or multi-hot rows. Same seed -> identical arrays.
    """
    index = mosaic_indices(len(images), n, seed, grid)
    return compose_mosaic(images, labels, index, num_classes)
