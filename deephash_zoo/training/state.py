"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

``DIR/last/`` holds ``state.safetensors`` (model weights, loss-module parameters such as ADMTH's
Q_k, optimiser buffers, the torch RNG state) and ``state.json`` (epoch, global step, optimiser
param groups and scalar state, scheduler state, Python and NumPy RNG states). It is written into
a temporary folder and renamed, so a training run killed at any moment leaves the previous
complete state behind.
"""
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deephash_zoo.utils import replace_dir

__all__ = ['save_train_state', 'load_train_state']


def _split_optimizer(state: Dict[str, Any]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, Dict[str, Any]] = {}
    for pid, buffers in state['state'].items():
        for name, value in buffers.items():
            if torch.is_tensor(value):
                tensors[f'optim.{pid}.{name}'] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {'param_groups': state['param_groups'], 'scalars': scalars}


def _join_optimizer(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith('optim.'):
            _, pid, name = key.split('.', 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta['scalars'].items():
        state.setdefault(int(pid), {}).update(values)
    return {'state': state, 'param_groups': meta['param_groups']}


def save_train_state(
        path: Path,
        model: torch.nn.Module,
        loss: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Optional[Any],
        epoch: int,
        step: int,
        extra: Optional[Dict[str, Any]] = None,
) -> None:
    """Write everything ``load_train_state`` needs to continue bit for bit, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f'model.{k}': v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({f'loss.{k}': v.detach().contiguous().cpu() for k, v in loss.state_dict().items()})
    opt_tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    tensors['rng.torch'] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f'rng.cuda.{i}'] = s
    np_state = np.random.get_state()
    meta = dict(
        epoch=epoch,
        step=step,
        optimizer=opt_meta,
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        rng_python=[random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        rng_numpy=[np_state[0], np_state[1].tolist(), *np_state[2:]],
        extra=extra or {},
    )
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
    try:
        save_file(tensors, str(tmp / 'state.safetensors'))
        (tmp / 'state.json').write_text(json.dumps(meta))
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_train_state(
        path: Path,
        model: torch.nn.Module,
        loss: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Optional[Any],
) -> Dict[str, Any]:
    """Restore a state written by ``save_train_state``; returns its JSON part (epoch, step, extra)."""
    path = Path(path)
    if not (path / 'state.json').is_file() or not (path / 'state.safetensors').is_file():
        raise FileNotFoundError(f'{path}: no training state to resume (state.json + state.safetensors)')
    try:
        tensors = load_file(str(path / 'state.safetensors'))
        meta = json.loads((path / 'state.json').read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f'{path}: corrupt training state ({e})') from e
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')})
        loss.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith('loss.')})
        optimizer.load_state_dict(_join_optimizer(tensors, meta['optimizer']))
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]  # torch: a header, then details
        first = ' '.join(lines[:2]) if lines else type(e).__name__
        first = first if len(first) <= 240 else first[:237] + '...'
        raise ValueError(f'{path}: the saved state does not fit this model and settings (was it written for '
                         f'another --model, code length or optimiser?): {first}') from None
    if scheduler is not None and meta['scheduler'] is not None:
        scheduler.load_state_dict(meta['scheduler'])
    torch.set_rng_state(tensors['rng.torch'])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith('rng.cuda.'))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    py = meta['rng_python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = meta['rng_numpy']
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
    return meta
