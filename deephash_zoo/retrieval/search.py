"""Query a hash index with images: encode them with the index's model, search, and time both steps.

``deephash-index query`` and the demo page answer through this one class, so the page shows exactly what
the command prints for the same image and checkpoint.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Sequence, Union

import numpy as np
import torch
from PIL import Image

from deephash_zoo.data.images import open_rgb, to_rgb

from .folder import eval_mode
from .index import HashIndex, network_mismatch

__all__ = ['HashSearcher', 'SearchResult', 'bit_string']

QueryImages = Union[Image.Image, str, os.PathLike, Sequence[Union[Image.Image, str, os.PathLike]]]


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of each query image, nearest first, with the packed codes and where the time went."""

    ids: List[list]  # per query: the index's item ids (-1 / None for slots an approximate index left empty)
    positions: np.ndarray  # (nq, k) int64 rows of the index (-1: empty slot)
    distances: np.ndarray  # (nq, k) int32 Hamming distances
    codes: np.ndarray  # (nq, ceil(bits/8)) packed uint8 query codes
    encode_ms: float  # transform + forward pass, all queries
    search_ms: float  # index search, all queries


class HashSearcher:
    """A model and the index built from its codes; ``search(images, k)`` answers image queries.

    ``transform`` maps a PIL image to the model's input tensor (``model_transform(model, img_size)`` at the
    size the index was built with). A model of another network than the index's (architecture, and backbone
    for ``hash_model`` ones) or without its code length is refused. The model encodes in eval mode and is left
    in the mode it was in.
    """

    def __init__(self, model: torch.nn.Module, index: HashIndex, transform: Callable[[Image.Image], torch.Tensor]
                 ) -> None:
        mismatch = network_mismatch(index.manifest, model)
        if mismatch:
            raise ValueError(f'model mismatch: the index holds codes of {mismatch[0]}, the model is {mismatch[1]}')
        if index.bits not in tuple(getattr(model, 'bits', ()) or ()):
            raise ValueError(f'code length mismatch: the index holds {index.bits}-bit codes, the model has code '
                             f'lengths {tuple(getattr(model, "bits", ()) or ())}')
        self.model = model
        self.index = index
        self.transform = transform
        self.device = next(model.parameters()).device
        self._row = {item: row for row, item in enumerate(index.ids)}

    @property
    def bits(self) -> int:
        return self.index.bits

    def encode(self, images: QueryImages) -> np.ndarray:
        """Packed ``(n, ceil(bits/8))`` codes of PIL images or image files (one, or a sequence of them), at the
        index's code length."""
        batch = torch.stack([self.transform(_as_image(im)) for im in _query_list(images)]).to(self.device)
        with torch.no_grad(), eval_mode(self.model):
            return self.model.encode(batch, bits=self.index.bits, packed=True).cpu().numpy()

    def search(self, images: QueryImages, k: int) -> SearchResult:
        """The k nearest index items of each image (one PIL image or image file, or a sequence of them; k above
        the index size is clipped). Codes are refused: ``searcher.index.search(codes, k)`` searches with them."""
        start = time.perf_counter()
        codes = self.encode(images)
        encoded = time.perf_counter()
        ids, dist = self.index.search(codes, k, model=self.index.manifest.get('model'))
        searched = time.perf_counter()
        plain = [[_plain(i) for i in row] for row in ids]
        rows = np.array([[self._row.get(i, -1) for i in row] for row in plain], dtype=np.int64)
        return SearchResult(ids=plain, positions=rows, distances=dist,
                            codes=codes, encode_ms=1000 * (encoded - start), search_ms=1000 * (searched - encoded))


def _query_list(images: QueryImages) -> List[Any]:
    """The query images as a list: one image or file is one query (a path is not a sequence of characters)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if hasattr(images, 'shape'):  # an array or tensor: codes (or pixels) where images were expected
        raise ValueError(f'query images: expected PIL images or image files, got a {type(images).__name__}; '
                         'to search with codes, call searcher.index.search(codes, k)')
    items = list(images)
    if not items:
        raise ValueError('no query images')
    return items


def _as_image(item: Any) -> Image.Image:
    """An RGB PIL image from a PIL image or an image file (opened with the package's checks: one line naming a
    missing, unreadable or oversized file)."""
    if isinstance(item, (str, os.PathLike)):
        return open_rgb(Path(item))
    if not isinstance(item, Image.Image):
        raise ValueError(f'query images: expected PIL images or image files, got a {type(item).__name__}')
    return to_rgb(item, 'query image')


def _plain(item: Any) -> Any:
    """An id as a JSON-ready Python value (numpy ints become ints)."""
    return int(item) if isinstance(item, (int, np.integer)) else item


def bit_string(packed: np.ndarray, bits: int, group: int = 8) -> str:
    """One packed code as '0'/'1' characters (numpy packbits order: +1 -> 1), a space every ``group`` bits."""
    chars = ''.join('1' if b else '0' for b in np.unpackbits(np.asarray(packed, dtype=np.uint8), count=bits))
    return ' '.join(chars[i:i + group] for i in range(0, len(chars), group)) if group else chars
