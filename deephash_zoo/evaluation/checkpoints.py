"""A checkpoint loaded for retrieval: the model plus what reports and index manifests record about it.

Shared by evaluation, index building and the experiments. A checkpoint is named as every command names
one: a checkpoint folder, a training run folder holding ``checkpoint/``, ``local-dir:FOLDER`` or
``hf-hub:ORG/NAME[@REVISION]`` (resolved through the Hugging Face cache, see
:func:`deephash_zoo.hub.checkpoint.resolve_checkpoint_dir`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from deephash_zoo.hub.checkpoint import load_checkpoint
from deephash_zoo.hub.folder import read_checkpoint_config, resolve_checkpoint_dir, weights_sha256
from deephash_zoo.utils import checked_device

__all__ = ['LoadedCheckpoint', 'resolve_device', 'checkpoint_summary', 'load_for_retrieval', 'data_defaults']


@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded for encoding, with what manifests and reports record about it."""

    model: torch.nn.Module
    config: Dict[str, Any]
    path: Path  # the checkpoint folder itself (resolved, absolute)
    architecture: str
    bits: Tuple[int, ...]
    weights_sha256: str
    img_size: Optional[int]  # the training input size; None: the model's default

    @property
    def training(self) -> Dict[str, Any]:
        return self.config.get('training') or {}


def resolve_device(name: str) -> str:
    """'auto' -> cuda when available, else cpu; a device this machine lacks ('cuda', 'cuda:1') or a name torch
    does not know is refused in one line (``utils.checked_device``)."""
    return str(checked_device(name))


def checkpoint_summary(path: str | os.PathLike) -> Tuple[Path, Dict[str, Any]]:
    """The resolved checkpoint folder and its config, without loading weights (cheap checks first)."""
    ckpt = resolve_checkpoint_dir(path).resolve()
    return ckpt, read_checkpoint_config(ckpt)


def load_for_retrieval(path: str | os.PathLike, device: str = 'cpu') -> LoadedCheckpoint:
    """Load a checkpoint with its weights hash and training input size."""
    ckpt, config = checkpoint_summary(path)
    model = load_checkpoint(ckpt, device=device)
    img_size = (config.get('training') or {}).get('img_size')
    return LoadedCheckpoint(model=model, config=config, path=ckpt, architecture=str(config['architecture']),
                            bits=tuple(model.bits), weights_sha256=weights_sha256(ckpt / 'model.safetensors'),
                            img_size=int(img_size) if img_size else None)


def data_defaults(ckpt: LoadedCheckpoint, data: Optional[str], root: Optional[str], seed: Optional[int]
                  ) -> Tuple[str, Optional[str], int]:
    """``--data`` / ``--data-root`` / ``--seed`` defaulting to what the checkpoint was trained on."""
    trained_on = ckpt.config.get('dataset') or ckpt.training.get('data')
    if data is None:
        if not trained_on:
            raise ValueError(f'{ckpt.path}: the checkpoint records no dataset; pass --data')
        data = str(trained_on)
    if root is None and data == trained_on:
        root = ckpt.training.get('data_root')
    if seed is not None and seed < 0:  # numpy's 'expected non-negative integer' named no flag
        raise ValueError(f'--seed must be >= 0 (the protocol\'s subset draw), got {seed}')
    if seed is None:  # the split it was trained on: its data seed where it had one, else its seed
        split_seed = ckpt.training.get('data_seed')
        seed = int(ckpt.training.get('seed') or 0) if split_seed is None else int(split_seed)
    return data, root, seed
