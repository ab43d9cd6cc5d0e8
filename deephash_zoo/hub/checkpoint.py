"""A checkpoint folder is timm's Hub layout: ``config.json`` + ``model.safetensors`` (+ ``README.md``).

timm's own ``save_for_hf`` writes it (so ``timm.create_model('hf-hub:...')`` and ``local-dir:``
read it back), with our fields at the top level of ``config.json``: ``bits``, ``num_labels``,
``dataset`` and ``training``. It is written into a temporary sibling folder and renamed into
place, so a reader never sees half a checkpoint. Weights are safetensors only: nothing here
unpickles.
"""
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import save_for_hf

__all__ = ['CHECKPOINT_FILES', 'save_checkpoint', 'load_checkpoint', 'read_checkpoint_config', 'weights_sha256',
           'replace_dir', 'resolve_checkpoint_dir']

CHECKPOINT_FILES = ('config.json', 'model.safetensors')
_REQUIRED_KEYS = ('architecture', 'num_classes', 'pretrained_cfg', 'bits')


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there, never leaving neither."""
    if final.exists():
        old = final.with_name(final.name + '.old')
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def weights_sha256(path: Union[str, Path]) -> str:
    """sha256 of a weights file (what manifests and ONNX metadata record)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
        model: torch.nn.Module,
        out_dir: Union[str, Path],
        dataset: Optional[str] = None,
        training: Optional[Dict[str, Any]] = None,
        extra_files: Optional[Dict[str, str]] = None,
) -> Path:
    """Write ``model`` as a checkpoint folder at ``out_dir`` (atomically) and return its path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config = dict(
        bits=list(model.bits),
        num_labels=int(getattr(model, 'num_labels', 0)),
        dataset=dataset,
        training=training or {},
    )
    model_args = {'num_labels': config['num_labels']} if config['num_labels'] else None
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out_dir.name}.', dir=out_dir.parent))
    try:
        save_for_hf(model, str(tmp), model_config=config, model_args=model_args, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def resolve_checkpoint_dir(path: Union[str, Path]) -> Path:
    """A checkpoint folder, or a training run folder holding one in ``checkpoint/``."""
    path = Path(path)
    if (path / 'config.json').is_file():
        return path
    if (path / 'checkpoint' / 'config.json').is_file():
        return path / 'checkpoint'
    raise FileNotFoundError(f'{path}: neither a checkpoint folder (config.json + model.safetensors) '
                            f'nor a training run holding one in checkpoint/')


def read_checkpoint_config(ckpt_dir: Union[str, Path]) -> Dict[str, Any]:
    """``config.json`` of a checkpoint folder, checked for the keys loading needs."""
    path = resolve_checkpoint_dir(ckpt_dir) / 'config.json'
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from e
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f'{path}: missing keys {missing}; expected {list(_REQUIRED_KEYS)}')
    return config


def load_checkpoint(ckpt_dir: Union[str, Path], device: Union[str, torch.device] = 'cpu') -> torch.nn.Module:
    """Rebuild the model a checkpoint folder describes and load its safetensors weights (strictly)."""
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    config = read_checkpoint_config(ckpt_dir)
    weights = ckpt_dir / 'model.safetensors'
    if not weights.is_file():
        raise FileNotFoundError(f'{weights}: missing (only safetensors weights are loaded)')
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f'{weights}: corrupt or truncated safetensors file ({e})') from e
    args = dict(config.get('model_args') or {})
    args.pop('num_classes', None)
    args.setdefault('num_labels', config.get('num_labels', 0))
    arch = config['architecture']
    model = timm.create_model(arch, pretrained=False, num_classes=sum(config['bits']), **args)
    if tuple(model.bits) != tuple(config['bits']):
        model.reset_classifier(sum(config['bits']), bits=config['bits'])
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = '; '.join(f'{what}: {keys[:4]}{" ..." if len(keys) > 4 else ""}' for what, keys in
                           (('missing', missing), ('unexpected', unexpected), ('shape mismatch', wrong)) if keys)
        raise ValueError(f'{weights}: weights do not fit {arch} with bits {tuple(config["bits"])} ({detail})')
    model.load_state_dict(state)
    return model.to(device).eval()
