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
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from deephash_zoo.models.published import DATASET_TAGS, PUBLISHED_TAGS, TRAINED_INPUT_SIZE
from deephash_zoo.utils import file_sha256

from .folder import read_checkpoint_config, resolve_checkpoint_dir

__all__ = ['seed_hf_cache', 'hf_cache_dir', 'repo_cache_folder', 'hub_repo_id', 'create_pretrained', 'place_file',
           'check_repo_id', 'check_fits_repo_name']

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
    check_repo_id(repo_id, 'repo id')
    return hf_cache_dir(cache_dir) / ('models--' + repo_id.replace('/', '--'))


def check_repo_id(repo_id: str, what: str = '--repo-id') -> str:
    """``ORG/NAME`` as the Hub accepts it, or a ValueError saying what is wrong (``what`` names the argument).

    Why huggingface_hub's own validation: a name it refuses ('org/name!', '../x', 97+ characters) would make a cache
    folder every loader then refuses, or an upload the Hub rejects after minutes of work."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'{what} {repo_id!r}: expected ORG/NAME, e.g. deephash-zoo/dath_alexnet_32.fmnist')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f'{what} {repo_id!r}: {e}') from None
    return repo_id


def check_fits_repo_name(ckpt: Path, repo_id: str) -> None:
    """Refuse weights the repository name would misdescribe: ``ORG/dath_alexnet_16.TAG`` holding another paper
    model (it would serve it, and file its scores, under the other name), or weights of other data or another input
    size than a tag the package knows says (``pretrained=True`` by the model name reports the tag's trained size,
    ``TRAINED_INPUT_SIZE``, whatever the weights saw). A name without a known model or tag constrains nothing."""
    from deephash_zoo.models import list_hash_models

    config = read_checkpoint_config(ckpt)
    name = repo_id.split('/')[-1]
    arch, named = config['architecture'], name.split('.')[0]
    if named in list_hash_models() and named != arch:
        raise ValueError(f'{ckpt}: holds {arch}, but repository {repo_id} names {named}; use ORG/{arch}.TAG')
    _check_tag(ckpt, config, repo_id, name.rpartition('.')[2] if '.' in name else None)


def _check_tag(ckpt: Path, config: Dict[str, Any], repo_id: str, tag: Optional[str]) -> None:
    """The checkpoint's recorded tag and input size against those of the tag the repository name ends in."""
    if tag not in _known_tags():
        return
    pcfg = config.get('pretrained_cfg') or {}
    recorded, data = pcfg.get('tag'), config.get('dataset') or (config.get('training') or {}).get('data')
    if recorded != tag:
        raise ValueError(f'{ckpt}: trained on {data!r} (tag {recorded!r}), but repository {repo_id} names tag '
                         f'{tag!r} ({_tag_data(tag)} weights); use a repository name without .{tag}')
    expected, trained = TRAINED_INPUT_SIZE.get(tag), _trained_size(config)
    if expected is not None and trained != (expected, expected):
        size = 'x'.join(map(str, trained)) if trained else 'an unrecorded size'
        raise ValueError(f'{ckpt}: trained at {size}, but repository {repo_id} names tag {tag!r}, whose weights '
                         f'pretrained=True serves at {expected}x{expected}; use a repository name without .{tag}')


def _known_tags() -> set:
    return {t for tags in PUBLISHED_TAGS.values() for t in tags} | set(TRAINED_INPUT_SIZE) | set(DATASET_TAGS.values())


def _tag_data(tag: str) -> str:
    return next((data for data, t in DATASET_TAGS.items() if t == tag), tag)


def _trained_size(config: Dict[str, Any]) -> Optional[Tuple[int, ...]]:
    """(height, width) the checkpoint records its weights were trained at: its pretrained_cfg's input size, as
    ``local-dir:`` and ``hf-hub:`` report it, else ``training['img_size']``."""
    size = (config.get('pretrained_cfg') or {}).get('input_size')
    if isinstance(size, (list, tuple)) and len(size) == 3:
        return tuple(size[1:])
    img = (config.get('training') or {}).get('img_size')
    return (img, img) if isinstance(img, int) else None


def _check_loads_as(ckpt: Path, repo_id: str) -> None:
    """Refuse a folder that would not load (config, a corrupt or truncated file, NaN weights, weights that do not
    fit), or that its repository name misdescribes (:func:`check_fits_repo_name`)."""
    from .checkpoint import load_checkpoint

    check_fits_repo_name(ckpt, repo_id)
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
    check_repo_id(repo_id, 'repo id')
    ckpt = resolve_checkpoint_dir(checkpoint_dir)
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
    return _hub_id(model_name).partition('@')[0] or None


def _hub_id(model_name: str) -> str:
    """``ORG/NAME[@REV]`` of ``hf-hub:ORG/NAME[@REV]`` or of a registered model's ``hf_hub_id`` ('': none)."""
    from timm.models import get_pretrained_cfg

    if model_name.startswith('hf-hub:'):
        return model_name[len('hf-hub:'):]
    cfg = get_pretrained_cfg(model_name, allow_unregistered=False)
    return (getattr(cfg, 'hf_hub_id', None) if cfg is not None else None) or ''


def create_pretrained(model_name: str, **kwargs: Any) -> torch.nn.Module:
    """``timm.create_model(model_name, pretrained=True, **kwargs)`` with a one-line error when the model has no
    published weights (or not the tag asked for), or when they are neither in the Hugging Face cache nor reachable
    (offline, unknown repository)."""
    import timm
    from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError

    if not ({'pretrained_cfg', 'pretrained_cfg_overlay'} & set(kwargs)):  # those may bring weights of their own
        _check_has_weights(model_name)
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (EntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError, OSError) as e:
        if isinstance(e, FileNotFoundError) and not isinstance(e, EntryNotFoundError):
            raise  # a local file (pretrained_cfg_overlay=dict(file=...)) that is missing: already clear
        raise FileNotFoundError(_not_found_message(model_name, e)) from e


def _not_found_message(model_name: str, error: Exception) -> str:
    """One line: the repository and revision asked for, why they were not fetched, the cache folder and what it
    lacks, and the ways out."""
    from huggingface_hub import constants
    from huggingface_hub.errors import RepositoryNotFoundError

    repo_id, _, revision = _hub_id(model_name).partition('@')
    where = repo_cache_folder(repo_id) if repo_id else hf_cache_dir()
    if constants.is_offline_mode():
        mode = 'offline (HF_HUB_OFFLINE=1)'
    elif isinstance(error, RepositoryNotFoundError):
        mode = 'the Hub has no such repository (or it is private and no token was given)'
    else:
        mode = 'the Hub could not be reached'
    asked = f'{repo_id}@{revision}' if repo_id and revision else repo_id or model_name
    return (f'{asked}: weights not found: {mode}, and the cache has no {where}/{_cached_weights(revision)}; seed it '
            f'from a checkpoint folder with {_seed_hint(repo_id or None, revision)}, or load a folder with '
            f"timm.create_model('local-dir:CHECKPOINT', pretrained=True) ({type(error).__name__})")


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in '0123456789abcdef' for c in revision)


def _cached_weights(revision: Optional[str]) -> str:
    """Where in a repository's cache folder huggingface_hub looks for the weights of ``revision``, offline."""
    if revision and _is_commit(revision):
        return f'snapshots/{revision}/model.safetensors'
    return f'snapshots/<rev>/model.safetensors with refs/{revision or "main"} naming <rev>'


def _seed_hint(repo_id: Optional[str], revision: Optional[str]) -> str:
    """How to put ``revision`` of ``repo_id`` into the cache: seed_hf_cache writes refs/main only, so a branch or
    tag other than main is served by loading without it."""
    call = f'deephash_zoo.hub.seed_hf_cache(CHECKPOINT, {repo_id!r}'
    if revision and _is_commit(revision):
        return f'{call}, revision={revision!r})'
    return f'{call}) and load it without @{revision} (seeding writes refs/main only)' if revision else f'{call})'


def _check_has_weights(model_name: str) -> None:
    """Refuse, before building anything, a registered model with no published weights or not the tag asked for
    (timm's RuntimeError came after the model was built, as a 40-line traceback), naming those that exist."""
    import timm
    from timm.models import split_model_name_tag

    if model_name.startswith(('hf-hub:', 'local-dir:')) or not timm.is_model(model_name):
        return  # a Hub or folder name has its own errors; an unknown name, timm's "Unknown model"
    arch, tag = split_model_name_tag(model_name)
    available = [n for n in timm.list_pretrained(arch) if split_model_name_tag(n)[0] == arch]
    if tag and f'{arch}.{tag}' not in available:
        raise ValueError(f'{model_name}: no pretrained weights tagged {tag!r} for {arch}; weights exist for: '
                         f'{_names(available)}')
    if not available:
        family = arch.rsplit('_', 1)[0]
        related = timm.list_pretrained(f'{family}_*') if family != arch else []
        also = f'; related models with weights: {_names(related)}' if related else ''
        raise ValueError(f"{model_name}: no pretrained weights are published for {arch} (timm.list_pretrained"
                         f"({arch!r}) is empty){also}; or load a checkpoint folder as 'local-dir:FOLDER'")


def _names(names: List[str], most: int = 6) -> str:
    return ', '.join(names[:most]) + (f' and {len(names) - most} more' if len(names) > most else '') or 'none'
