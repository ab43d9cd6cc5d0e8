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
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from timm.data import resolve_data_config
from tqdm.auto import tqdm

from deephash_zoo.data.images import IMAGE_SUFFIXES, ImageRejected, open_rgb, to_rgb
from deephash_zoo.models.any_backbone import GENERIC_ARCH
from deephash_zoo.precision import autocast, choose_precision, precision_models, relaxed_codes
from deephash_zoo.utils import checked_device

from .encoding import model_transform

__all__ = ['IMAGE_SUFFIXES', 'EncodedImages', 'PrecisionCopies', 'encode_images', 'eval_mode', 'list_images',
           'model_identity']

ImagesArg = Union[str, os.PathLike, Image.Image, Sequence[Union[str, os.PathLike, Image.Image]]]


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
    positions: List[int] = field(default_factory=list)  # where each code's image stood among those given


def model_identity(model: torch.nn.Module) -> Dict[str, Optional[str]]:
    """What names the network that made codes, as an index manifest records it: ``model``, the timm architecture,
    and for a ``hash_model`` (architecture ``hash_backbone`` whatever its backbone) ``backbone``, the backbone's."""
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    found = {'model': arch}
    backbone = _backbone_name(model) if arch == GENERIC_ARCH else None
    if backbone:
        found['backbone'] = backbone
    return found


def _backbone_name(model: torch.nn.Module) -> Optional[str]:
    """The backbone's own architecture (``resnet18`` for ``resnet18.a1_in1k`` or an hf-hub name of it), else the
    name it was created from."""
    cfg = getattr(getattr(model, 'backbone', None), 'pretrained_cfg', None) or {}
    spec = getattr(model, 'backbone_spec', None)
    return cfg.get('architecture') or (spec[0] if spec else None)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, every module's train/eval flag as it was afterwards: encoding a
    model the caller is training (or has put partly in eval mode) must not change it."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


class PrecisionCopies:
    """The modules one model encodes with at each precision (for bf16 on a CPU, a copy with bf16 weights), kept
    from one :func:`encode_images` call to the next: made anew for every call, the copy cost more than a
    one-image search. A new copy is made when the model or the device type changes, or the weights do through
    torch: replaced, moved, or changed in place (an optimizer step, ``load_state_dict``, an in-place op under
    ``no_grad``). An edit through ``.data`` is not seen (torch counts no version for it): ``clear()`` after one."""

    def __init__(self) -> None:
        self._key: Optional[tuple] = None
        self._models: Optional[Callable[[str], torch.nn.Module]] = None

    def clear(self) -> None:
        """Drop the copies (the next call makes new ones)."""
        self._key = self._models = None

    def __call__(self, model: torch.nn.Module, device_type: str) -> Callable[[str], torch.nn.Module]:
        key = _weights_key(model, device_type)
        if self._models is None or key is None or key != self._key:
            self._key, self._models = key, precision_models(model, device_type)
        return self._models


def _weights_key(model: torch.nn.Module, device_type: str) -> Optional[tuple]:
    """Where every weight and buffer is and how often torch has changed it in place (None: tensors made under
    inference_mode count no versions, so nothing can be reused)."""
    try:
        state = tuple((t.data_ptr(), t._version) for t in chain(model.parameters(), model.buffers()))
    except RuntimeError:
        return None
    return id(model), device_type, state


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Image files under ``folder`` (recursive, by suffix, case-insensitive), sorted for a stable order. A link
    to nowhere with an image suffix is listed too, so that it is skipped by name, not dropped unseen."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f'{root}: not a folder of images')
    return sorted(p for p in root.rglob('*') if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _items(images: ImagesArg) -> Tuple[List[Any], List[str]]:
    if isinstance(images, Image.Image):  # one image, not a sequence of its pixels
        return [images], ['0']
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
             ) -> Iterator[Tuple[List[Image.Image], List[str], List[int]]]:
    """Batches of opened images with their ids and positions among ``items``; the rest go to ``skipped``."""
    images: List[Image.Image] = []
    names: List[str] = []
    positions: List[int] = []
    for position, (item, name) in enumerate(zip(items, ids, strict=True)):
        try:
            images.append(to_rgb(item, name) if isinstance(item, Image.Image) else open_rgb(item))
        except ImageRejected as e:
            skipped.append((name, str(e)))
            continue
        names.append(name)
        positions.append(position)
        if len(images) == size:
            yield images, names, positions
            images, names, positions = [], [], []
    if images:
        yield images, names, positions


def encode_images(model: torch.nn.Module, images: ImagesArg, *, bits: Optional[int] = None, packed: bool = True,
                  batch_size: int = 64, progress: bool = False, device: Union[str, torch.device, None] = None,
                  img_size: Optional[int] = None, precision: str = 'auto',
                  copies: Optional[PrecisionCopies] = None) -> EncodedImages:
    """Codes of ``images`` (a folder, searched recursively; image files; PIL images; or one image file or PIL
    image) at code length ``bits`` (default: the model's longest), in batches of ``batch_size``, at input size
    ``img_size`` (default: the model's ``pretrained_cfg``, the size its weights were trained at).
    ``precision``: ``'fp32'``, ``'bf16'``, ``'fp16'`` (CUDA) or ``'auto'``: bf16 on AMX CPUs and fp16 on CUDA
    when the first batch's signs agree with fp32's on 99% of the bits, else fp32 (:mod:`deephash_zoo.precision`).
    The model runs in eval mode and is left in the mode it was in; ``device`` (default: where the model is)
    moves it there, and it stays there (moving it back would copy its weights on every call). ``copies`` keeps
    the precision copies for the next call (:class:`PrecisionCopies`; default: made for this call alone)."""
    model_bits = tuple(getattr(model, 'bits', ()) or ())
    if not model_bits:
        raise ValueError('the model has no hash layer (it is not a hashing model, or num_classes=0)')
    bits = max(model_bits) if bits is None else bits
    if bits not in model_bits:
        raise ValueError(f'the model has code lengths {model_bits}; got bits={bits!r}')
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
    device = checked_device(device) if device is not None else next(model.parameters()).device
    items, ids = _items(images)
    transform = model_transform(model, img_size)
    img_size = img_size or int(resolve_data_config(model=model)['input_size'][-1])
    model.to(device)
    skipped: List[Tuple[str, str]] = []
    chunks, kept, positions = [], [], []
    chosen: Optional[str] = None
    at = (copies or PrecisionCopies())(model, device.type)
    with eval_mode(model), tqdm(total=len(items), desc='encoding', unit='image', disable=not progress) as bar:
        for batch, names, where in _batches(items, ids, batch_size, skipped):
            x = torch.stack([transform(im) for im in batch]).to(device)
            if chosen is None:
                chosen = choose_precision(precision, device.type, lambda p, x=x: relaxed_codes(at(p), x, p))
            with autocast(chosen, device.type):
                chunks.append(at(chosen).encode(x, bits=bits, packed=packed).cpu().numpy())
            kept += names
            positions += where
            bar.update(len(kept) + len(skipped) - bar.n)
    if not kept:
        raise ValueError(f'none of the {len(items)} images could be opened (first: {skipped[0][1]})')
    manifest = dict(model_identity(model), model_bits=list(model_bits), img_size=img_size, precision=chosen)
    return EncodedImages(np.concatenate(chunks), kept, bits, skipped, manifest, chosen or 'fp32', positions)

