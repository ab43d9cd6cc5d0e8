"""A checkpoint folder placed in a Hugging Face cache, so ``pretrained=True`` works without the Hub.

``timm.create_model(name, pretrained=True)`` asks huggingface_hub for ``model.safetensors`` of the
model's ``hf_hub_id``; with ``HF_HUB_OFFLINE=1`` (or no network) huggingface_hub answers from its cache
folder alone. :func:`seed_hf_cache` writes that folder the way a download would have
(``models--ORG--NAME/{blobs,snapshots/REV,refs/main}``), which serves air-gapped machines and proves
offline that timm's own Hub path loads our checkpoints. :func:`create_pretrained` wraps
``timm.create_model(..., pretrained=True)`` to turn huggingface_hub's "not found" errors into one
line naming the repository, the cache folder and what should be there.
"""
import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional, Union

import torch

from deephash_zoo.utils import file_sha256

from .folder import read_checkpoint_config, resolve_checkpoint_dir

__all__ = ['seed_hf_cache', 'hf_cache_dir', 'repo_cache_folder', 'hub_repo_id', 'create_pretrained', 'place_file']

PathLike = Union[str, Path]
SEEDED_FILES = ('config.json', 'model.safetensors', 'README.md')


def hf_cache_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The cache folder huggingface_hub reads: ``cache_dir``, else its ``HF_HUB_CACHE`` (read at import)."""
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_folder(repo_id: str, cache_dir: Optional[PathLike] = None) -> Path:
    """``<cache>/models--ORG--NAME``: where huggingface_hub keeps one model repository."""
    _check_repo_id(repo_id)
    return hf_cache_dir(cache_dir) / ('models--' + repo_id.replace('/', '--'))


def _check_repo_id(repo_id: str) -> None:
    parts = repo_id.split('/')
    if len(parts) != 2 or not all(parts):
        raise ValueError(f'repo id {repo_id!r}: expected ORG/NAME (e.g. deephash-zoo/dath_n_16.fmnist)')


def _check_loads_as(ckpt: Path, repo_id: str) -> None:
    """Refuse a folder that would not load (config, a corrupt or truncated file, NaN weights, weights that do not
    fit), or whose architecture is not the paper model the repository name gives (``ORG/dath_alexnet_16.TAG``
    holding a 32-bit model would serve it, and file its scores, under the other name)."""
    from deephash_zoo.models import list_hash_models

    from .checkpoint import load_checkpoint

    arch = read_checkpoint_config(ckpt)['architecture']
    named = repo_id.split('/')[-1].split('.')[0]
    if named in list_hash_models() and named != arch:
        raise ValueError(f'{ckpt}: holds {arch}, but repository {repo_id} names {named}; seed it under '
                         f'ORG/{arch}.TAG')
    load_checkpoint(ckpt)


def place_file(src: Path, dst: Path) -> None:
    """Hard link ``src`` at ``dst`` when the filesystem allows (no copy of 200+ MB), else copy it."""
    tmp = dst.with_name(f'.{dst.name}.tmp')
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _link_or_copy(blob: Path, pointer: Path) -> None:
    """Snapshot entry -> blob as a relative symlink (as huggingface_hub does), or a copy where links fail."""
    pointer.unlink(missing_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:
        place_file(blob, pointer)


def seed_hf_cache(
        checkpoint_dir: PathLike,
        repo_id: str,
        cache_dir: Optional[PathLike] = None,
        revision: Optional[str] = None,
) -> Path:
    """Put a checkpoint folder into a Hugging Face cache as revision ``main`` of ``repo_id``.

    Files are stored as blobs named by their sha256 with relative symlinks from
    ``snapshots/REV/`` (copies where symlinks are not allowed), and ``refs/main`` names ``REV``.
    ``REV`` defaults to a 40-hex id derived from the files' hashes, so seeding the same checkpoint
    twice gives the same revision. Returns the snapshot folder.
    """
    ckpt = resolve_checkpoint_dir(checkpoint_dir)
    _check_repo_id(repo_id)
    _check_loads_as(ckpt, repo_id)
    files = [ckpt / name for name in SEEDED_FILES if (ckpt / name).is_file()]
    digests = {f.name: file_sha256(f) for f in files}
    if revision is None:
        revision = hashlib.sha1(''.join(f'{n}:{d};' for n, d in sorted(digests.items())).encode()).hexdigest()
    elif len(revision) != 40 or any(c not in '0123456789abcdef' for c in revision):
        raise ValueError(f'revision {revision!r}: expected a 40-character lowercase hex commit id')

    repo = repo_cache_folder(repo_id, cache_dir)
    blobs, snapshot, refs = repo / 'blobs', repo / 'snapshots' / revision, repo / 'refs'
    for folder in (blobs, snapshot, refs):
        folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        blob = blobs / digests[f.name]
        if not blob.is_file():
            place_file(f, blob)
        _link_or_copy(blob, snapshot / f.name)
    tmp = refs / f'.main.{uuid.uuid4().hex[:8]}'
    tmp.write_text(revision)  # no newline: huggingface_hub reads the file as the revision itself
    os.replace(tmp, refs / 'main')
    return snapshot


def hub_repo_id(model_name: str) -> Optional[str]:
    """The ``hf_hub_id`` timm would download ``model_name``'s weights from (None: it has none)."""
    from timm.models import get_pretrained_cfg

    name = model_name[len('hf-hub:'):] if model_name.startswith('hf-hub:') else None
    if name is not None:
        return name.split('@')[0]
    cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
    return hub_id or None


def create_pretrained(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)`` with a one-line error when the
    weights are neither in the Hugging Face cache nor reachable (offline, unknown repository)."""
    import timm
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (EntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, OSError) as e:
        if isinstance(e, FileNotFoundError) and not isinstance(e, EntryNotFoundError):
            raise  # a local file (pretrained_cfg_overlay=dict(file=...)) that is missing: already clear
        repo_id = hub_repo_id(model_name)
        where = repo_cache_folder(repo_id) if repo_id else hf_cache_dir()
        if constants.is_offline_mode():
            mode = 'offline (HF_HUB_OFFLINE=1)'
        elif isinstance(e, RepositoryNotFoundError):
            mode = 'the Hub has no such repository (or it is private and no token was given)'
        else:
            mode = 'the Hub could not be reached'
        raise FileNotFoundError(
            f'{repo_id or model_name}: weights not found: {mode}, and the cache has no '
            f'{where}/snapshots/<rev>/model.safetensors with refs/main; seed it from a checkpoint folder with '
            f'deephash_zoo.hub.seed_hf_cache(CHECKPOINT, {repo_id!r}), or load a folder with '
            f"timm.create_model('local-dir:CHECKPOINT', pretrained=True) ({type(e).__name__})") from e

