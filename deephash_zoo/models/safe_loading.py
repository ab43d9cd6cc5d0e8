"""What a saved ``config.json`` may make the loader do: only build the architecture it names, and only read
safetensors.

``model_args`` reach ``timm.create_model``, whose own keywords (``checkpoint_path``, ``pretrained_cfg``, ...)
would load other files, possibly pickles; a config may set only the architecture's constructor arguments.
timm's ``local-dir:`` / ``hf-hub:`` routes fall back to ``pytorch_model.bin`` (a pickle) when a folder has no
``model.safetensors``; our entrypoints refuse such a folder before timm looks for one.
"""
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

__all__ = ['check_saved_model_args', 'check_pretrained_source', 'register_constructor', 'PICKLE_SUFFIXES',
           'NonFiniteWeightsError', 'check_finite_weights', 'state_misfit', 'checking_pretrained',
           'check_pretrained_state']

PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.ckpt', '.pkl', '.pickle')
# keywords that load weights or configs from elsewhere: never taken from a file
_LOADING_KEYWORDS = frozenset({
    'pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir', 'pretrained_strict',
    'backbone_pretrained', 'state_dict', 'file', 'url', 'hf_hub_id',
})
# the generic any-backbone entrypoint passes its other arguments to the backbone's timm.create_model
_GENERIC_ARCH = 'hash_backbone'
_GENERIC_ARGS = frozenset({'backbone', 'bits', 'num_classes', 'num_labels', 'in_chans', 'drop_rate',
                           'drop_path_rate', 'global_pool', 'img_size'})


# True while one of our entrypoints loads pretrained weights (any device): they are checked as load_checkpoint checks
# a file's, so a bad cached or local-dir file gives one line naming it, not torch's key listing or NaN codes
_CHECKING_PRETRAINED: ContextVar[bool] = ContextVar('checking_pretrained', default=False)

# (architecture name prefixes, model class): filled by each family's module as it registers its models, so
# this module needs none of them (they import it for check_pretrained_source)
_CONSTRUCTORS: List[Tuple[Tuple[str, ...], Callable[..., Any]]] = []


def register_constructor(prefixes: Tuple[str, ...], cls: Callable[..., Any]) -> None:
    """Declare ``cls`` the constructor of the architectures whose names start with ``prefixes``."""
    _CONSTRUCTORS.append((prefixes, cls))


def _constructor_args(arch: str) -> Optional[frozenset]:
    """The constructor arguments of one of our architectures (None: not ours, nothing to compare with)."""
    for prefixes, cls in _CONSTRUCTORS:
        if arch.startswith(prefixes):
            return frozenset(inspect.signature(cls).parameters) - {'device', 'dtype'}
    return _GENERIC_ARGS if arch == _GENERIC_ARCH else None


def check_saved_model_args(arch: str, model_args: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """``model_args`` of a saved config, when every key is a constructor argument of ``arch``; a ValueError naming
    ``where`` and the keys otherwise."""
    if not isinstance(model_args, Mapping):
        raise ValueError(f'{where}: model_args must be a JSON object, got {type(model_args).__name__}')
    loading = sorted(set(model_args) & _LOADING_KEYWORDS)
    if loading:
        raise ValueError(f'{where}: model_args sets {loading}, which would load files named by the config; '
                         'refused (a config may only set the architecture\'s own arguments)')
    accepted = _constructor_args(arch)
    unknown = sorted(set(model_args) - accepted) if accepted is not None else []
    if unknown:
        raise ValueError(f'{where}: model_args {unknown} are not arguments of {arch} '
                         f'(it takes {", ".join(sorted(accepted))})')
    return dict(model_args)


def check_pretrained_source(pretrained: bool, kwargs: Mapping[str, Any]) -> None:
    """Before timm loads ``local-dir:`` / ``hf-hub:`` weights: the folder or repository must hold
    ``model.safetensors`` (timm would otherwise unpickle ``pytorch_model.bin``), and the config's model_args
    must be the architecture's own. A ``file`` given through ``pretrained_cfg_overlay`` must be a safetensors
    file that exists (timm would unpickle a ``.bin``/``.pth``, and say of a missing one only ``FileNotFoundError``)."""
    overlay_file = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    if pretrained and overlay_file:
        _check_weights_file(Path(str(overlay_file)))
    cfg = kwargs.get('pretrained_cfg')
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
    if not isinstance(cfg, Mapping):
        return
    source = cfg.get('source')
    if source in ('local-dir', 'hf-hub') and kwargs.get('pretrained_model_args'):
        where = cfg.get('file') or cfg.get('hf_hub_id') or source
        check_saved_model_args(str(cfg.get('architecture', '')), kwargs['pretrained_model_args'],
                               f'{where}/config.json')
    if not pretrained:
        return
    if source == 'local-dir':
        folder = Path(str(cfg.get('file')))
        if not (folder / 'model.safetensors').is_file():
            pickled = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES)) \
                if folder.is_dir() else []
            hint = f'; found {pickled}, which are pickle files and never loaded' if pickled else ''
            raise ValueError(f'{folder}: no model.safetensors (only safetensors weights are loaded){hint}')
    elif source == 'hf-hub':
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        repo, _, revision = str(cfg.get('hf_hub_id')).partition('@')
        try:
            hf_hub_download(repo, 'model.safetensors', revision=revision or None)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f'hf-hub:{repo}: model.safetensors is not available ({first}); only safetensors '
                             'weights are loaded') from None


def _check_weights_file(path: Path) -> None:
    """A weights file named directly (``pretrained_cfg_overlay=dict(file=...)``): a safetensors file that exists."""
    if path.name.endswith(PICKLE_SUFFIXES) or path.suffix != '.safetensors':
        raise ValueError(f'{path}: only safetensors weights are loaded (a {path.suffix or "suffix-less"} file may be '
                         'a pickle, which is never loaded); give a .safetensors file')
    if not path.is_file():
        raise ValueError(f'{path}: no such weights file')


class NonFiniteWeightsError(ValueError):
    """Weights holding NaN or infinity: a diverged run, never saved or loaded (one-line CLI error)."""


def check_finite_weights(state: Mapping[str, Any], where: str) -> None:
    """Refuse weights holding NaN or infinity, naming the first tensors: codes from them would be noise."""
    from deephash_zoo.utils import non_finite_tensors

    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteWeightsError(f'{where}: {len(bad)} weight tensor(s) hold NaN or infinity '
                                    f'({", ".join(bad[:3])}{" ..." if len(bad) > 3 else ""}); refusing to '
                                    'serve codes from them (the run diverged: retrain with a lower --lr)')


def state_misfit(state: Mapping[str, Any], own: Mapping[str, Any], strict: bool = True,
                 expecting: str = 'the model') -> Optional[str]:
    """What keeps ``state`` from loading into a model whose state dict is ``own``, in one line (None: it fits):
    missing and unexpected keys (when ``strict``) and shape mismatches, a few of each, and which top-level modules
    each side has, so another architecture shows at a glance."""
    missing = sorted(set(own) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(own)) if strict else []
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or wrong):
        return None
    detail = '; '.join(f'{what}: {keys[:4]}{" ..." if len(keys) > 4 else ""}' for what, keys in
                       (('missing', missing), ('unexpected', unexpected), ('shape mismatch', wrong)) if keys)
    if missing or unexpected:
        held, expected = (sorted({k.split('.')[0] for k in keys}) for keys in (state, own))
        detail += f'; the file holds {held}, {expecting} expects {expected}'
    return detail


def pretrained_weights_file(variant: str, kwargs: Mapping[str, Any]) -> str:
    """Where timm reads ``variant``'s pretrained weights from, for messages: the local file, the cached file of a
    Hub repository (or the repository, where the cache has none), else the variant."""
    cfg = kwargs.get('pretrained_cfg')
    if cfg is None or isinstance(cfg, str):  # the registry: the name's (tagged) cfg
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(f'{variant}.{cfg}' if cfg else variant)
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg or {})
    cfg.update(kwargs.get('pretrained_cfg_overlay') or {})
    if cfg.get('source') == 'local-dir':
        return str(Path(str(cfg.get('file'))) / 'model.safetensors')
    if cfg.get('file') and cfg.get('source') != 'hf-hub':
        return str(cfg['file'])
    if cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = str(cfg['hf_hub_id']).partition('@')
        cached = try_to_load_from_cache(repo, cfg.get('hf_hub_filename') or 'model.safetensors',
                                        revision=revision or None)
        return cached if isinstance(cached, str) else f'hf-hub:{cfg["hf_hub_id"]}'
    return variant


@contextmanager
def checking_pretrained(pretrained: bool, variant: str, kwargs: Optional[Mapping[str, Any]] = None
                        ) -> Iterator[None]:
    """Around an entrypoint's timm build: a model's ``load_state_dict`` checks the pretrained weights it is given
    (see ``check_pretrained_state``), and a file safetensors cannot read is named corrupt in one line."""
    from safetensors import SafetensorError

    token = _CHECKING_PRETRAINED.set(pretrained)
    try:
        yield
    except SafetensorError as e:  # timm reads the file: a cut download or a truncated local-dir: file
        where = pretrained_weights_file(variant, kwargs or {})
        raise ValueError(f'{variant}: the pretrained weights file {where} is corrupt or truncated ({e}); '
                         'download or copy it again') from e
    finally:
        _CHECKING_PRETRAINED.reset(token)


LABEL_CLASSIFIER = 'aux_classifier.'  # DATH's label classifier: trained with J2, never part of a checkpoint


def check_pretrained_state(model: Any, state_dict: Mapping[str, Any], strict: bool) -> bool:
    """Inside ``checking_pretrained(True, ...)``: refuse weights holding NaN / infinity or not fitting ``model``,
    naming their source. Elsewhere (a user's own ``load_state_dict``) nothing is checked.

    True when the weights fit but for the label classifier ``num_labels=`` asked for, which no checkpoint holds:
    it stays freshly initialised (fine-tuning from published weights), as a new ``num_classes`` head does."""
    if not _CHECKING_PRETRAINED.get():
        return False
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    source = cfg.get('file') or cfg.get('hf_hub_id') or cfg.get('url') or cfg.get('architecture', 'weights')
    check_finite_weights(state_dict, f'pretrained weights {source}')
    own = model.state_dict()
    fresh = [k for k in own if k.startswith(LABEL_CLASSIFIER) and k not in state_dict]
    own = {k: v for k, v in own.items() if k not in fresh}
    misfit = state_misfit(state_dict, own, strict, expecting=cfg.get('architecture', 'the model'))
    if misfit:
        raise ValueError(f'pretrained weights {source}: do not fit {type(model).__name__} with bits '
                         f'{tuple(model.bits)} ({misfit})')
    return bool(fresh)
