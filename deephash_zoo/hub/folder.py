"""Reading a checkpoint folder: where it is (a folder, a run folder, ``local-dir:``, ``hf-hub:``), its
``config.json`` checked, and the hash of its weights.

Kept apart from :mod:`.checkpoint` (which writes and loads checkpoints) so that the card renderer and
everything else that only reads a folder depend on this module alone, and nothing imports in a circle.
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import timm

from deephash_zoo.models.safe_loading import check_saved_model_args
from deephash_zoo.utils import file_sha256

__all__ = ['CHECKPOINT_FILES', 'HUB_PREFIX', 'LOCAL_PREFIX', 'weights_sha256', 'hub_checkpoint_name', 'hub_snapshot',
           'resolve_checkpoint_dir', 'run_folder', 'read_checkpoint_config']

CHECKPOINT_FILES = ('config.json', 'model.safetensors')
_REQUIRED_KEYS = ('architecture', 'num_classes', 'pretrained_cfg', 'bits')
_PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.pth.tar', '.ckpt', '.pkl')
HUB_PREFIX, LOCAL_PREFIX = 'hf-hub:', 'local-dir:'


def weights_sha256(path: Union[str, Path]) -> str:
    """sha256 of a weights file (what manifests, cards and ONNX metadata record)."""
    return file_sha256(path)


def hub_checkpoint_name(name: Any) -> Optional[str]:
    """``ORG/NAME[@REV]`` of an ``hf-hub:`` checkpoint name, else None (a folder, or ``local-dir:``)."""
    text = os.fspath(name) if isinstance(name, (str, os.PathLike)) else None
    if isinstance(text, str) and text.startswith(HUB_PREFIX):
        return text[len(HUB_PREFIX):]
    return None


def hub_snapshot(repo: str) -> Path:
    """The folder of ``ORG/NAME[@REV]``'s config.json and model.safetensors in the Hugging Face cache,
    downloading them when the Hub is reachable; one line naming the cache folder when it is not."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = repo.partition('@')
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'{HUB_PREFIX}{repo}: expected {HUB_PREFIX}ORG/NAME[@REVISION]')
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=list(CHECKPOINT_FILES)))
    except HFValidationError as e:
        raise ValueError(f'{HUB_PREFIX}{repo}: not a valid repository name ({e})') from e
    except (OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError, OSError) as e:
        cache = Path(constants.HF_HUB_CACHE) / f'models--{repo_id.replace("/", "--")}'
        if constants.is_offline_mode():
            mode = 'offline (HF_HUB_OFFLINE=1)'
        elif isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
            mode = 'the Hub has no such repository or revision (or it is private and no token was given)'
        else:
            mode = 'the Hub could not be reached'
        raise FileNotFoundError(f'{HUB_PREFIX}{repo}: checkpoint not found: {mode}, and the cache has no '
                                f'{cache}/snapshots/<rev>/ with config.json and model.safetensors; seed it with '
                                f'deephash_zoo.hub.seed_hf_cache(CHECKPOINT, {repo_id!r}), or pass the folder '
                                f'({type(e).__name__})') from e


def resolve_checkpoint_dir(path: Union[str, Path]) -> Path:
    """A checkpoint folder, a training run folder holding one in ``checkpoint/``, ``local-dir:FOLDER``, or
    ``hf-hub:ORG/NAME[@REVISION]`` (its config.json and model.safetensors through the Hugging Face cache:
    downloaded when online, read from the cache with ``HF_HUB_OFFLINE=1``)."""
    text = os.fspath(path)
    repo = hub_checkpoint_name(text)
    if repo is not None:
        return hub_snapshot(repo)
    path = Path(text[len(LOCAL_PREFIX):] if text.startswith(LOCAL_PREFIX) else text)
    if (path / 'config.json').is_file():
        return path
    if (path / 'checkpoint' / 'config.json').is_file():
        return path / 'checkpoint'
    raise FileNotFoundError(f'{path}: neither a checkpoint folder (config.json + model.safetensors) '
                            f'nor a training run holding one in checkpoint/')


def run_folder(ckpt_dir: Union[str, Path]) -> Path:
    """The training run a checkpoint folder belongs to: ``RUN`` for ``RUN/checkpoint`` (as ``deephash-train``
    writes it), else the checkpoint folder itself; what is derived from the checkpoint goes beside it there."""
    path = Path(ckpt_dir)
    return path.parent if path.name == 'checkpoint' else path


def read_checkpoint_config(ckpt_dir: Union[str, Path]) -> Dict[str, Any]:
    """``config.json`` of a checkpoint folder, checked for the keys loading needs."""
    path = resolve_checkpoint_dir(ckpt_dir) / 'config.json'
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from e
    if not isinstance(config, dict):
        raise ValueError(f'{path}: expected a JSON object with keys {list(_REQUIRED_KEYS)}, '
                         f'got {type(config).__name__}')
    if 'bits' not in config and 'num_classes' in config:  # a folder of timm's own save_for_hf
        bits = _architecture_bits(config, path)
        if bits is not None:
            config['bits'] = bits
    missing = [k for k in _REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f'{path}: missing keys {missing}; expected {list(_REQUIRED_KEYS)}')
    bits = config['bits']
    if (not isinstance(bits, list) or not bits or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                                           for b in bits)):
        raise ValueError(f'{path}: "bits" must be a non-empty list of positive code lengths, got {bits!r}')
    if config['num_classes'] != sum(bits):
        raise ValueError(f'{path}: "num_classes" {config["num_classes"]!r} is not the sum of "bits" {bits} '
                         f'({sum(bits)})')
    arch = config['architecture']
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise ValueError(f'{path}: "architecture" {arch!r} is not a registered model; expected one of '
                         f'deephash_zoo.list_hash_models() (is deephash_zoo imported?)')
    if not arch.startswith(('dath', 'admth_', 'dmlh_')) and arch != 'hash_backbone':
        raise ValueError(f'{path}: "architecture" {arch!r} is a timm model but not a hashing one; expected one of '
                         'deephash_zoo.list_hash_models() or hash_backbone (hash_model checkpoints)')
    if not isinstance(config['pretrained_cfg'], dict):
        raise ValueError(f'{path}: "pretrained_cfg" must be an object (timm\'s pretrained config)')
    check_saved_model_args(arch, config.get('model_args') or {}, f'{path}')
    return config


def _architecture_bits(config: Dict[str, Any], path: Path) -> Any:
    """The code lengths of a config without ``bits`` (timm's ``save_for_hf`` writes none): ``model_args['bits']``,
    else what the architecture builds with that ``num_classes``; left out (reported as missing) when the
    architecture is not one of ours."""
    arch = config.get('architecture')
    if not isinstance(arch, str) or not timm.is_model(arch):
        return None
    args = check_saved_model_args(arch, config.get('model_args') or {}, f'{path}')
    if isinstance(args.get('bits'), (list, tuple)):
        return list(args['bits'])
    args.pop('num_classes', None)
    args.pop('num_labels', None)
    try:
        model = timm.create_model(arch, num_classes=config['num_classes'], device='meta', **args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f'{path}: no "bits", and {arch} does not build from its model_args ({e})') from e
    bits = getattr(model, 'bits', None)
    return [int(b) for b in bits] if bits else None
