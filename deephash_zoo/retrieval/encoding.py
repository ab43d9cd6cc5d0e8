"""Encode whole datasets into packed hash codes, batched, with the model's own eval transform.

Evaluation and index building must see images exactly as a single-image query does, so both go
through :func:`model_transform` (timm's eval transform for the model, at the checkpoint's training
input size). Multi-length models are encoded in one forward pass per batch and the codes of every
length are sliced from it: evaluating four lengths costs one pass, not four.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
from timm.data import create_transform, resolve_data_config
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from deephash_zoo.models.contract import check_input_size

__all__ = ['encode_dataset', 'encode_dataset_lengths', 'model_transform']

Device = Union[str, torch.device]


def model_transform(model: torch.nn.Module, img_size: Optional[int] = None) -> Callable[..., torch.Tensor]:
    """timm's eval transform for ``model`` (PIL image -> normalised tensor), at ``img_size`` when given.

    The CLIs pass the checkpoint's training ``img_size``: codes of images resized differently from
    training are not what the model learned to produce.
    """
    cfg = resolve_data_config(model=model)
    if img_size is not None:
        check_input_size(img_size, int(getattr(model, 'min_input_size', 1)))
        cfg['input_size'] = (cfg['input_size'][0], img_size, img_size)
    return create_transform(**cfg)


def _with_model_transform(model: torch.nn.Module, dataset: Dataset) -> Dataset:
    """A HashDataset without a transform yields uint8 tensors; give it the model's transform instead."""
    if getattr(dataset, 'transform', 0) is None and hasattr(dataset, 'with_transform'):
        return dataset.with_transform(model_transform(model))
    return dataset


def encode_dataset_lengths(
        model: torch.nn.Module,
        dataset: Dataset,
        lengths: Optional[Sequence[int]] = None,
        batch_size: int = 64,
        device: Device = 'cpu',
        progress: bool = True,
        num_workers: int = 0,
        desc: str = 'encoding',
) -> Dict[int, np.ndarray]:
    """Packed uint8 codes ``{length: (n, ceil(length/8))}`` of every item, in dataset order, one pass.

    ``lengths`` defaults to all of ``model.bits``. Items are ``(image, ...)`` tuples or bare image
    tensors, already transformed (a HashDataset without a transform gets :func:`model_transform`).
    The model is moved to ``device`` and left in eval mode.
    """
    bits = tuple(model.bits)
    lengths = bits if lengths is None else tuple(int(b) for b in lengths)
    unknown = [b for b in lengths if b not in bits]
    if not bits or unknown:
        raise ValueError(f'the model has code lengths {bits}; cannot encode {unknown or "anything"}')
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be a positive integer, got {batch_size!r}')
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError('the dataset is empty; nothing to encode')
    dataset = _with_model_transform(model, dataset)
    slices = model.code_slices()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model.to(device).eval()
    chunks: Dict[int, list] = {b: [] for b in lengths}
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit='batch', disable=not progress, leave=False):
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            signs = model.encode(images.to(device)).cpu().numpy()  # (B, sum(bits)) int8, all lengths
            for b in lengths:
                chunks[b].append(np.packbits(signs[:, slices[b]] > 0, axis=1))
    return {b: np.concatenate(parts) for b, parts in chunks.items()}


def encode_dataset(
        model: torch.nn.Module,
        dataset: Dataset,
        batch_size: int = 64,
        device: Device = 'cpu',
        bits: Optional[int] = None,
        progress: bool = True,
        num_workers: int = 0,
) -> np.ndarray:
    """Packed uint8 codes ``(n, ceil(bits/8))`` of every item, like ``model.encode(packed=True)``.

    ``bits=None`` on a multi-length model packs all lengths concatenated, as ``model.encode`` does;
    use :func:`encode_dataset_lengths` to get each length separately from the same pass.
    """
    if bits is not None:
        return encode_dataset_lengths(model, dataset, (bits,), batch_size, device, progress, num_workers)[bits]
    per_length = encode_dataset_lengths(model, dataset, None, batch_size, device, progress, num_workers)
    if len(per_length) == 1:
        return next(iter(per_length.values()))
    signs = np.concatenate([np.unpackbits(c, axis=1, count=b) for b, c in per_length.items()], axis=1)
    return np.packbits(signs, axis=1)

