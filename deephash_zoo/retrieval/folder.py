"""Encode your own images: a folder, a list of files or PIL images, streamed in batches.

Memory holds one batch of images and the packed codes (8 bytes an image at 64 bits), so a folder of any
size encodes in bounded memory. Images go through the model's own eval transform (``resolve_data_config``:
the input size its weights were trained at); files that cannot be opened, or are beyond the size bounds of
:func:`deephash_zoo.data.images.open_rgb`, are skipped and reported, not fatal.

Two lines from a folder to neighbours::

    found = deephash_zoo.encode_images(model, 'photos/')
    index = HashIndex.build(found.codes, found.bits, ids=found.ids, manifest_extra=found.manifest)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import resolve_data_config
from tqdm.auto import tqdm

from deephash_zoo.data.images import IMAGE_SUFFIXES, ImageRejected, open_rgb, to_rgb
from deephash_zoo.precision import autocast, choose_precision, precision_models, relaxed_codes

from .encoding import model_transform

__all__ = ['IMAGE_SUFFIXES', 'EncodedImages', 'encode_images', 'list_images']

ImagesArg = Union[str, os.PathLike, Sequence[Union[str, os.PathLike, Image.Image]]]


@dataclass
class EncodedImages:
    """Codes of the images that opened, their ids (paths relative to the folder, the given paths, or list
    positions for PIL images), and the files skipped with why."""

    codes: np.ndarray  # (n, ceil(bits/8)) uint8 packed, or (n, bits) int8 {-1, +1} with packed=False
    ids: List[str]
    bits: int
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    manifest: Dict[str, Any] = field(default_factory=dict)  # what made the codes, for HashIndex.build
    precision: str = 'fp32'  # what the codes were computed in (see deephash_zoo.precision)


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Image files under ``folder`` (recursive, by suffix, case-insensitive), sorted for a stable order. A link
    to nowhere with an image suffix is listed too, so that it is skipped by name, not dropped unseen."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f'{root}: not a folder of images')
    return sorted(p for p in root.rglob('*') if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _items(images: ImagesArg) -> Tuple[List[Any], List[str]]:
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if root.is_file():
            return [root], [root.name]
        if not root.exists():
            raise FileNotFoundError(f'{root}: no such image file or folder')
        paths = list_images(root)
        if not paths:
            raise ValueError(f'{root}: no image files ({", ".join(IMAGE_SUFFIXES)})')
        return paths, [p.relative_to(root).as_posix() for p in paths]
    if isinstance(images, (np.ndarray, torch.Tensor)):  # PIL would fail on it with "has no attribute 'read'"
        raise ValueError(f'images: expected a folder, image files or PIL images, got a {type(images).__name__} '
                         "(for tensors already transformed, call model.encode(x))")
    items = list(images)
    if not items:
        raise ValueError('no images to encode')
    odd = next((x for x in items if not isinstance(x, (str, os.PathLike, Image.Image))), None)
    if odd is not None:
        raise ValueError(f'images: expected image files or PIL images, got a {type(odd).__name__} among them')
    ids = [str(x) if not isinstance(x, Image.Image) else str(i) for i, x in enumerate(items)]
    return items, ids


def _batches(items: List[Any], ids: List[str], size: int, skipped: List[Tuple[str, str]]
             ) -> Iterator[Tuple[List[Image.Image], List[str]]]:
    images, names = [], []
    for item, name in zip(items, ids, strict=True):
        try:
            images.append(to_rgb(item, name) if isinstance(item, Image.Image) else open_rgb(item))
        except ImageRejected as e:
            skipped.append((name, str(e)))
            continue
        names.append(name)
        if len(images) == size:
            yield images, names
            images, names = [], []
    if images:
        yield images, names


def encode_images(model: torch.nn.Module, images: ImagesArg, *, bits: Optional[int] = None, packed: bool = True,
                  batch_size: int = 64, progress: bool = False, device: Union[str, torch.device, None] = None,
                  img_size: Optional[int] = None, precision: str = 'auto') -> EncodedImages:
    """Codes of ``images`` (a folder, searched recursively; image files; or PIL images) at code length ``bits``
    (default: the model's longest), in batches of ``batch_size``, at input size ``img_size`` (default: the
    model's ``pretrained_cfg``, the size its weights were trained at). ``precision``: ``'fp32'``, ``'bf16'``,
    ``'fp16'`` (CUDA) or ``'auto'``: bf16 on AMX CPUs and fp16 on CUDA when the first batch's signs agree with
    fp32's on 99% of the bits, else fp32 (:mod:`deephash_zoo.precision`)."""
    model_bits = tuple(getattr(model, 'bits', ()) or ())
    if not model_bits:
        raise ValueError('the model has no hash layer (it is not a hashing model, or num_classes=0)')
    bits = max(model_bits) if bits is None else bits
    if bits not in model_bits:
        raise ValueError(f'the model has code lengths {model_bits}; got bits={bits}')
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
    items, ids = _items(images)
    transform = model_transform(model, img_size)
    img_size = img_size or int(resolve_data_config(model=model)['input_size'][-1])
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    skipped: List[Tuple[str, str]] = []
    chunks, kept = [], []
    chosen: Optional[str] = None
    at = precision_models(model, device.type)
    with tqdm(total=len(items), desc='encoding', unit='image', disable=not progress) as bar:
        for batch, names in _batches(items, ids, batch_size, skipped):
            x = torch.stack([transform(im) for im in batch]).to(device)
            if chosen is None:
                chosen = choose_precision(precision, device.type, lambda p, x=x: relaxed_codes(at(p), x, p))
            with autocast(chosen, device.type):
                chunks.append(at(chosen).encode(x, bits=bits, packed=packed).cpu().numpy())
            kept += names
            bar.update(len(kept) + len(skipped) - bar.n)
    if not kept:
        raise ValueError(f'none of the {len(items)} images could be opened (first: {skipped[0][1]})')
    cfg = getattr(model, 'pretrained_cfg', {}) or {}
    manifest = dict(model=cfg.get('architecture'), model_bits=list(model_bits), img_size=img_size, precision=chosen)
    return EncodedImages(np.concatenate(chunks), kept, bits, skipped, manifest, chosen or 'fp32')

