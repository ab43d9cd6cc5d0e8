"""Publish a checkpoint folder to the Hugging Face Hub through huggingface_hub.

The upload folder is built first, then uploaded as one commit: ``config.json`` (local paths in the
training config reduced to their last component), ``model.safetensors`` (hard-linked where the
filesystem allows) and ``README.md`` rendered from the config and metrics; ``pretrained_cfg.hf_hub_id`` names
the repository pushed to, as timm sets it when it loads from there. Before anything is uploaded the folder is
loaded back through timm's own ``local-dir:`` path, which is what ``hf-hub:`` users will run. ``dry_run`` stops
after building; nothing remote is touched.
"""
import json
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from huggingface_hub import HfApi, get_token

from deephash_zoo.utils import file_in_the_way

from .cache import check_fits_repo_name, check_repo_id, place_file
from .card import render_card, strip_local_path, write_card
from .checkpoint import load_checkpoint, read_checkpoint_config, replace_dir, resolve_checkpoint_dir


def _network_errors() -> Tuple[type, ...]:
    """The transport errors of whichever HTTP library this huggingface_hub talks through (httpx2, httpx or
    requests): no network, refused connection, timeout."""
    import importlib

    found = []
    for module, name in (('httpx2', 'HTTPError'), ('httpx', 'HTTPError'), ('requests', 'RequestException')):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_NETWORK_ERRORS = _network_errors()

__all__ = ['UploadPlan', 'MissingTokenError', 'PushError', 'build_upload_folder', 'push_checkpoint', 'check_repo_id',
           'check_upload_target', 'zoo_uploads']

PathLike = Union[str, Path]
UPLOAD_FILES = ('config.json', 'model.safetensors', 'README.md')


class MissingTokenError(ValueError):
    """No Hugging Face token: uploading cannot start (a ValueError, so CLIs print it as one line)."""


class PushError(ValueError):
    """The Hub refused or failed the upload; the message names the repository and the Hub's answer."""


@dataclass
class UploadPlan:
    """What is (or would be) uploaded: the folder, its files with sizes, and where."""

    repo_id: str
    folder: Path
    files: List[Tuple[str, int]]
    private: bool = False
    scrubbed: List[str] = field(default_factory=list)  # config keys whose local paths were shortened
    commit_url: Optional[str] = None
    kept: bool = True  # False: the folder was temporary and is gone

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    @property
    def url(self) -> str:
        return f'https://huggingface.co/{self.repo_id}'


def check_upload_target(out_dir: PathLike, ckpt: Path) -> None:
    """Refuse an ``out_dir`` that building would destroy (it is replaced whole): a file, a link, a folder holding
    anything but an earlier upload's files, or the checkpoint being pushed. A new or empty folder, or an earlier
    upload folder, is taken."""
    out_dir = Path(out_dir)
    blocking = file_in_the_way(out_dir)
    if blocking is not None:
        raise ValueError(f'{out_dir}: a file stands at {blocking}, where a folder would go')
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ValueError(f'{out_dir}: a file or link is there, not an upload folder; refusing to replace it: '
                         'choose another folder')
    if out_dir.resolve() == ckpt.resolve():
        raise ValueError(f'{out_dir}: is the checkpoint being pushed; refusing to replace it: choose another folder')
    names = sorted(p.name for p in out_dir.iterdir())
    if names and names != sorted(UPLOAD_FILES):
        raise ValueError(f'{out_dir}: holds {", ".join(names[:4])}{" ..." if len(names) > 4 else ""}, not an '
                         f'upload folder ({", ".join(UPLOAD_FILES)}); refusing to replace it: choose another folder')


def _upload_config(config: Dict[str, Any], repo_id: str) -> Tuple[Dict[str, Any], List[str]]:
    """The config.json to upload: the repository's own ``hf_hub_id`` (the checkpoint's names the zoo's, which a
    copy downloaded with ``hf download`` and loaded by ``local-dir:`` would report), no local paths."""
    out, scrubbed = _scrubbed_config(config)
    out['pretrained_cfg'] = dict(out.get('pretrained_cfg') or {}, hf_hub_id=repo_id)
    return out, scrubbed


def _scrubbed_config(config: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """config.json without local paths (training.out, data_root, init; list:/coco: dataset paths)."""
    out = json.loads(json.dumps(config))
    changed = []
    if out.get('dataset') is not None and strip_local_path(out['dataset']) != out['dataset']:
        out['dataset'] = strip_local_path(out['dataset'])
        changed.append('dataset')
    training = out.get('training') or {}
    for key, value in list(training.items()):
        if isinstance(value, str) and strip_local_path(value) != value:
            training[key] = strip_local_path(value)
            changed.append(f'training.{key}')
    return out, changed


def _verify_with_timm(folder: Path) -> None:
    """Load the folder as users will (timm's ``local-dir:``), strictly; a failure names the folder."""
    import timm

    try:
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    except Exception as e:  # noqa: BLE001  (whatever timm raises, the message names the folder)
        first = str(e).strip().split('\n')[0]
        raise ValueError(f'{folder}: timm cannot load this upload folder ({first})') from e


@contextmanager
def _naming_checkpoint(tmp: Path, ckpt: Path) -> Iterator[None]:
    """Errors raised while checking the folder being built name the checkpoint the user gave, not the temporary
    folder, which is gone by the time they are read."""
    try:
        yield
    except ValueError as e:
        if str(tmp) not in str(e):
            raise
        raise ValueError(str(e).replace(str(tmp), str(ckpt))) from e


def build_upload_folder(
        checkpoint_dir: PathLike,
        out_dir: PathLike,
        repo_id: str,
        metrics: Optional[PathLike] = None,
        efficiency: Optional[PathLike] = None,
        verify: bool = True,
) -> UploadPlan:
    """Write the folder that would be uploaded to ``repo_id`` at ``out_dir`` (atomically). ``out_dir`` and the
    weights' fit to the repository name (:func:`check_upload_target`, :func:`check_fits_repo_name`) are checked
    before any work."""
    check_repo_id(repo_id)
    ckpt = resolve_checkpoint_dir(checkpoint_dir)
    out_dir = Path(out_dir)
    check_upload_target(out_dir, ckpt)
    check_fits_repo_name(ckpt, repo_id)
    config = read_checkpoint_config(ckpt)
    if verify:
        load_checkpoint(ckpt)  # our own checks first: their errors name the file and what was expected
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f'.{out_dir.name}.{uuid.uuid4().hex[:8]}'
    tmp.mkdir()
    try:
        clean, scrubbed = _upload_config(config, repo_id)
        (tmp / 'config.json').write_text(json.dumps(clean, indent=2) + '\n')
        place_file(ckpt / 'model.safetensors', tmp / 'model.safetensors')
        with _naming_checkpoint(tmp, ckpt):
            write_card(render_card(tmp, metrics=metrics, efficiency=efficiency, repo_id=repo_id), tmp / 'README.md')
            if verify:
                _verify_with_timm(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = [(name, (out_dir / name).stat().st_size) for name in UPLOAD_FILES]
    return UploadPlan(repo_id=repo_id, folder=out_dir, files=files, scrubbed=scrubbed)


def zoo_uploads(work: PathLike, org: str) -> List[Tuple[Path, str, Path]]:
    """(checkpoint, repo id, metrics) of every model a zoo build evaluated in ``work``: ORG/MODEL.TAG, the tag of
    the data it was trained on. A model without a published tag or without metrics is refused by name, before any
    upload (pushing the others would publish part of a build)."""
    work = Path(work)
    if not (work / 'stages.jsonl').is_file():
        raise FileNotFoundError(f'{work}: not a deephash-zoo build folder (no stages.jsonl)')
    out, unevaluated = [], []
    for ckpt in sorted(work.glob('*/checkpoint')):
        metrics = ckpt.parent / 'eval' / 'metrics.json'
        if not (ckpt / 'config.json').is_file():
            continue  # a training stage still running: no model yet
        if not metrics.is_file():
            unevaluated.append(ckpt.parent.name)
            continue
        config = read_checkpoint_config(ckpt)
        tag = (config.get('pretrained_cfg') or {}).get('tag')
        if not tag:
            raise ValueError(f'{ckpt}: its config carries no pretrained tag; push it with --checkpoint --repo-id')
        out.append((ckpt, check_repo_id(f"{org}/{config['architecture']}.{tag}"), metrics))
    if unevaluated:
        raise ValueError(f'{work}: not evaluated (no eval/metrics.json), so nothing is pushed: '
                         f'{", ".join(unevaluated)}; finish the build with deephash-zoo build')
    if not out:
        raise ValueError(f'{work}: no evaluated model to push yet (run deephash-zoo build)')
    return out


def push_checkpoint(
        checkpoint_dir: PathLike,
        repo_id: str,
        private: bool = False,
        metrics: Optional[PathLike] = None,
        efficiency: Optional[PathLike] = None,
        dry_run: bool = False,
        out_dir: Optional[PathLike] = None,
        api: Optional[Any] = None,
        token: Optional[str] = None,
        commit_message: Optional[str] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
) -> UploadPlan:
    """Build the upload folder and (unless ``dry_run``) create ``repo_id`` and upload it as one commit.

    ``revision``: the branch to commit to (created from main when missing; default main). ``create_pr``: open
    a pull request with the commit instead of committing to the branch (the Hub's review route).

    The token (``token``, else ``huggingface_hub.get_token()``: ``HF_TOKEN`` or ``hf auth login``) is
    checked before any work. ``api`` replaces ``HfApi(token=...)`` (tests pass a recording fake).
    ``out_dir`` keeps the folder; without it the folder lives in a temporary directory, removed at the end.
    """
    check_repo_id(repo_id)
    if not dry_run:
        token = token or get_token()
        if not token:
            raise MissingTokenError('no Hugging Face token: set HF_TOKEN or run `hf auth login` '
                                    '(--dry-run builds and lists the upload without one)')
    scratch = None
    if out_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix='deephash-push-'))
        out_dir = scratch / repo_id.split('/')[1]
    try:
        plan = build_upload_folder(checkpoint_dir, out_dir, repo_id, metrics=metrics, efficiency=efficiency)
        plan.private = private
        if not dry_run:
            client = api if api is not None else HfApi(token=token)
            arch = read_checkpoint_config(plan.folder)['architecture']
            try:
                client.create_repo(repo_id, private=private, exist_ok=True, repo_type='model')
                if revision and not create_pr:
                    client.create_branch(repo_id, branch=revision, exist_ok=True, repo_type='model')
                info = client.upload_folder(
                    repo_id=repo_id, folder_path=str(plan.folder), repo_type='model',
                    commit_message=commit_message or f'Upload {arch} checkpoint (deephash-zoo)',
                    revision=revision, create_pr=create_pr,
                )
            except (OSError, ValueError, *_NETWORK_ERRORS) as e:  # HTTP errors are OSErrors; no network: httpx's
                first = str(e).strip().split('\n')[0]
                raise PushError(f'{repo_id}: upload failed ({type(e).__name__}: {first}); '
                                f'is {getattr(client, "endpoint", "the Hub")} reachable?') from e
            plan.commit_url = (getattr(info, 'pr_url', None) or getattr(info, 'commit_url', None)
                               or (str(info) if info is not None else None))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    plan.kept = scratch is None
    return plan
