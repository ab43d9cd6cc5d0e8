"""MS-COCO ``instances_*.json`` as a multi-label hashing dataset, read through pycocotools.

Labels are multi-hot over the categories in ascending category id (the 80 COCO classes, ids 1..90 with
gaps). Images without any annotation are dropped, as DATH / ADMTH and DHN before them do (train+val 2014:
123,287 images -> 122,218 labelled); how many were dropped is kept on the dataset as ``num_dropped``.
"""
import contextlib
import io
import json
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from deephash_zoo.extras import require

from .dataset import HashDataset
from .listfile import _inside_root

__all__ = ['load_coco']

PathLike = Union[str, Path]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f'{path}: COCO annotation file not found')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: unreadable COCO annotation json ({e})') from e
    if not isinstance(data, dict):
        raise ValueError(f'{path}: not a COCO annotation file (top level is {type(data).__name__}, not an object)')
    for key in ('images', 'categories', 'annotations'):
        if key not in data:
            hint = ' (image_info_*.json files carry no labels; use instances_*.json)' if key == 'annotations' else ''
            raise ValueError(f'{path}: no {key!r} key, not a COCO instances file{hint}')
    return data


def load_coco(annotation_json: PathLike, image_root: PathLike, *,
              transform: Optional[Callable[..., Any]] = None) -> HashDataset:
    """A file-backed :class:`HashDataset` of the labelled images, in ascending image id (ids = image ids).

    ``image_root`` is the folder holding the json's ``file_name`` entries (e.g. ``coco/train2014``).
    """
    COCO = require('pycocotools.coco').COCO  # deferred: only COCO users pay for the import

    path = Path(annotation_json)
    data = _read_json(path)
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; library code does not
            coco.createIndex()
    except (KeyError, TypeError) as e:
        raise ValueError(f'{path}: malformed COCO annotation file (missing or bad field {e})') from e

    unknown = set(coco.imgToAnns) - set(coco.imgs)
    if unknown:
        raise ValueError(f'{path}: annotations refer to image ids not in "images", e.g. {min(unknown)}')
    cat_ids = sorted(coco.getCatIds())
    column = {cat_id: j for j, cat_id in enumerate(cat_ids)}
    names = [coco.cats[c].get('name', str(c)) for c in cat_ids]
    img_ids = sorted(coco.getImgIds())
    rows, files, ids = [], [], []
    for img_id in img_ids:
        anns = coco.imgToAnns.get(img_id, [])
        if not anns:
            continue
        row = np.zeros(len(cat_ids), dtype=np.uint8)
        for ann in anns:
            if ann.get('category_id') not in column:
                raise ValueError(f'{path}: annotation {ann.get("id")} of image {img_id} has category '
                                 f'{ann.get("category_id")!r}, not in "categories"')
            row[column[ann['category_id']]] = 1
        rows.append(row)
        if 'file_name' not in coco.imgs[img_id]:
            raise ValueError(f'{path}: image {img_id} has no "file_name"')
        name = coco.imgs[img_id]['file_name']
        if not isinstance(name, str) or not _inside_root(name):
            raise ValueError(f'{path}: image {img_id} file_name {name!r} leaves the image root (absolute or with ..)')
        files.append(name)
        ids.append(str(img_id))
    if not rows:
        raise ValueError(f'{path}: no image has an annotation')
    return HashDataset(np.stack(rows), paths=files, image_root=image_root, transform=transform, ids=ids,
                       class_names=names, single_label=False, source=path, num_dropped=len(img_ids) - len(rows))
