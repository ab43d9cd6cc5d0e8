"""A checkpoint folder is timm's Hub layout: ``config.json`` + ``model.safetensors`` + ``README.md``.

timm's own ``save_for_hf`` writes it (so ``timm.create_model('hf-hub:...')`` and ``local-dir:``
read it back), with our fields at the top level of ``config.json``: ``bits``, ``num_labels``,
``dataset`` and ``training``. Code lengths other than the architecture's default go into
``model_args`` too where timm can rebuild them that way, so ``pretrained=True`` gets the same
head. A checkpoint holds the inference model only: DATH's label classifier (J2's training head) stays
in the run's ``last/`` state, so ``num_classes=``, ``checkpoint_path=`` and ``features_only=`` work on it
as on any timm weights. ``pretrained_cfg`` records the preprocessing the weights were trained and
evaluated with (the input size of ``training['img_size']``), so ``resolve_data_config`` hands users
the size the published mAP was measured at. ``README.md`` is the model card rendered from
the package's card template (no metrics yet; ``deephash-card`` / ``deephash-push`` add them). The folder
is written into a temporary sibling and renamed into place, so a reader never sees half a checkpoint.
Weights are safetensors only: nothing here unpickles.
"""
import os
import shutil
import stat
import uuid
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from timm.models import save_for_hf

from deephash_zoo.models.contract import HUB_ORG, filter_state_dict
from deephash_zoo.models.published import PUBLISHED_TAGS, tag_for_dataset
from deephash_zoo.models.safe_loading import (
    NonFiniteWeightsError,
    check_finite_weights,
    check_saved_model_args,
    state_misfit,
)
from deephash_zoo.utils import checked_device, non_finite_tensors, replace_dir

from .folder import (
    _PICKLE_SUFFIXES,
    CHECKPOINT_FILES,
    read_checkpoint_config,
    resolve_checkpoint_dir,
    run_folder,
    weights_sha256,
)

__all__ = ['CHECKPOINT_FILES', 'save_checkpoint', 'checkpoint_data_config', 'load_checkpoint', 'NonFiniteWeightsError',
           'read_checkpoint_config', 'weights_sha256',
           'replace_dir', 'resolve_checkpoint_dir', 'run_folder', 'adopt_recorded_cfg']

_TUPLE_CFG_KEYS = ('input_size', 'test_input_size', 'min_input_size', 'pool_size', 'mean', 'std')  # timm keeps tuples


def _state_shapes(model: torch.nn.Module) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _bits_model_args(model: torch.nn.Module) -> Dict[str, Any]:
    """``{'bits': [...]}`` when the lengths differ from the default and timm can rebuild them from it.

    DATH's lengths only shape the hash layer, so ``bits=`` rebuilds it; ADMTH's ``bits`` also sets
    its branches, so there a single shared code is rebuilt from ``num_classes`` alone (timm's own
    knob) and other combinations only load through :func:`load_checkpoint`.
    """
    bits = tuple(int(b) for b in model.bits)
    arch = getattr(model, 'pretrained_cfg', {}).get('architecture')
    if not arch or bits == tuple(getattr(model, 'default_bits', bits)):
        return {}
    want = _state_shapes(model)
    for args in ({}, {'bits': list(bits)}):
        try:
            probe = timm.create_model(arch, num_classes=sum(bits), device='meta', **args)
        except (TypeError, ValueError, RuntimeError):
            continue
        if _state_shapes(probe) == want:
            return args
    return {}


@contextmanager
def _inference_only(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` without DATH's label classifier (weights and the ``num_labels`` timm recorded to rebuild it)
    for as long as the block runs; restored after, so training can go on."""
    aux = getattr(model, 'aux_classifier', None)
    recorded = getattr(model, '_model_args', None)
    if aux is None and not (isinstance(recorded, dict) and 'num_labels' in recorded):
        yield model
        return
    model.aux_classifier = None
    if isinstance(recorded, dict):
        model._model_args = {k: v for k, v in recorded.items() if k != 'num_labels'}
    try:
        yield model
    finally:
        model.aux_classifier = aux
        if isinstance(recorded, dict):
            model._model_args = recorded


def published_identity(model: torch.nn.Module, dataset: Optional[str]) -> Dict[str, Optional[str]]:
    """``tag`` and ``hf_hub_id`` of weights trained on ``dataset``: the zoo's repository where the zoo publishes
    this model on that data (``.fmnist``), else none (not the architecture's default tag, which
    names other weights)."""
    tag = tag_for_dataset(dataset)
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    ours = tag is not None and tag in PUBLISHED_TAGS.get(arch, ())
    return dict(tag=tag, hf_hub_id=f'{HUB_ORG}/{arch}.{tag}' if ours else None)


def checkpoint_data_config(model: torch.nn.Module, training: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The preprocessing to record: the model's own, at the input size it was trained with (``img_size``)."""
    size = (training or {}).get('img_size')
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return {'input_size': (int(model.pretrained_cfg.get('input_size', (3,))[0]), size, size)}
    return {}


def save_checkpoint(
        model: torch.nn.Module,
        out_dir: Union[str, Path],
        dataset: Optional[str] = None,
        training: Optional[Dict[str, Any]] = None,
        extra_files: Optional[Dict[str, str]] = None,
        card: bool = True,
) -> Path:
    """Write ``model`` (its inference part) as a checkpoint folder at ``out_dir`` (atomically); return its path.

    ``card`` renders ``README.md`` from the template when the source tree's ``hub_cards/`` is there
    (an installed wheel without it writes no card); ``extra_files['README.md']`` replaces it.
    ``num_labels`` in ``config.json`` says how many labels the training data had; the weights hold no
    label classifier.
    """
    out_dir = Path(out_dir)
    if not getattr(model, 'bits', None):  # load_checkpoint rebuilds the model from its code lengths
        what = 'has no hash layer (num_classes=0)' if hasattr(model, 'bits') else 'is not a hashing model'
        raise ValueError(f'{out_dir}: not saved: {type(model).__name__} {what}; a checkpoint holds a model that '
                         'encodes (deephash_zoo.hash_model wraps any timm backbone)')
    bad = non_finite_tensors(model.state_dict())
    if bad:
        raise NonFiniteWeightsError(f'{out_dir}: not saved: {len(bad)} weight tensor(s) hold NaN or infinity '
                                    f'({", ".join(bad[:3])}{" ..." if len(bad) > 3 else ""})')
    _check_replaceable(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f'{out_dir}: not saved: a file stands where its folder {out_dir.parent} would go') from None
    config = dict(
        bits=list(model.bits),
        num_labels=int(getattr(model, 'num_labels', 0)),
        dataset=dataset,
        training=training or {},
        pretrained_cfg=dict(published_identity(model, dataset), classifier=_classifier_names(model)),
    )
    model_args = dict(_bits_model_args(model))
    data_config = checkpoint_data_config(model, training)
    tmp = out_dir.parent / f'.{out_dir.name}.{uuid.uuid4().hex[:8]}'
    tmp.mkdir()  # not mkdtemp (0700): a checkpoint is as readable as the user's other folders
    try:
        with _inference_only(model):
            save_for_hf(model, str(tmp), model_config=config, model_args=model_args or None, safe_serialization=True,
                        data_config=data_config or None)
        # safetensors writes 0600; give the weights the permissions config.json got from the umask
        os.chmod(tmp / 'model.safetensors', stat.S_IMODE((tmp / 'config.json').stat().st_mode))
        if card and 'README.md' not in (extra_files or {}):
            _write_default_card(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _classifier_names(model: torch.nn.Module) -> Union[str, Tuple[str, ...]]:
    """Every hash layer's module name, as timm's ``classifier`` lists them: it drops them from the weights when a
    load asks for another ``num_classes``. The registry names the first alone, so a second length's layer was
    reported as an unexpected key."""
    layer = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is layer)
    names = tuple(f'{prefix}.fc.{i}' for i in range(len(layer.fc)))
    return names[0] if len(names) == 1 else names


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything at ``out_dir`` but a checkpoint folder (a run's checkpoint is saved over every
    epoch): a file, or a folder of the user's own, would be deleted whole."""
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not out_dir.is_dir():
        raise ValueError(f'{out_dir}: not saved: a file is there, not a checkpoint folder; refusing to replace it')
    if not (out_dir / 'config.json').is_file() and any(out_dir.iterdir()):
        raise ValueError(f'{out_dir}: not saved: the folder holds other files and no checkpoint (no config.json); '
                         'refusing to replace it: choose another folder')


def _write_default_card(folder: Path) -> None:
    """The card is documentation, not needed to load: without Jinja2 (huggingface_hub renders with it) the
    checkpoint is written without one rather than not at all."""
    from huggingface_hub.utils import is_jinja_available

    from .card import TEMPLATE_PATH, render_card, write_card

    if TEMPLATE_PATH.is_file() and is_jinja_available():
        write_card(render_card(folder), folder / 'README.md')


def load_checkpoint(ckpt_dir: Union[str, Path], device: Union[str, torch.device] = 'cpu') -> torch.nn.Module:
    """Rebuild the model a checkpoint folder describes and load its safetensors weights (strictly)."""
    device = checked_device(device)  # 'cuda' on a machine without one: one line, not the driver's error
    ckpt_dir = resolve_checkpoint_dir(ckpt_dir)
    config = read_checkpoint_config(ckpt_dir)
    weights = ckpt_dir / 'model.safetensors'
    if not weights.is_file():
        pickled = sorted(p.name for p in ckpt_dir.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
        hint = f'; found {pickled}, which are pickle files and never loaded' if pickled else ''
        raise FileNotFoundError(f'{weights}: missing (only safetensors weights are loaded){hint}')
    try:
        # read, not mapped, into CPU memory: the weights become the model's own tensors, which must not change (or
        # fault) when the file is rewritten in place later (a server holds its model for hours); another device's
        # tensors are copies anyway
        backend = 'pread' if torch.device(device).type == 'cpu' else 'mmap'
        state = load_file(str(weights), device=str(device), backend=backend)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f'{weights}: corrupt or truncated safetensors file ({e})') from e
    check_finite_weights(state, str(weights))
    arch = config['architecture']
    args = check_saved_model_args(arch, config.get('model_args') or {}, f'{ckpt_dir / "config.json"}')
    args.pop('num_classes', None)
    args.pop('num_labels', None)  # the inference model: no label classifier
    model = _model_without_weights(arch, num_classes=sum(config['bits']), **args)
    if tuple(model.bits) != tuple(config['bits']):
        model.reset_classifier(sum(config['bits']), bits=config['bits'])
    state = filter_state_dict(state, model)  # older checkpoints carry the label classifier
    own = model.state_dict()
    misfit = state_misfit(state, own, expecting=arch)
    if misfit:
        raise ValueError(f'{weights}: weights do not fit {arch} with bits {tuple(config["bits"])} ({misfit})')
    # the file's tensors become the model's (no second copy); in the model's dtypes, as copying into it gave
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    adopt_recorded_cfg(model, config)
    return model.to(device).eval()


def _model_without_weights(arch: str, **kwargs: Any) -> torch.nn.Module:
    """``arch`` built to receive a checkpoint's weights: on the meta device (shapes only: no memory, no random
    draws), where every tensor it holds is in its state dict and so comes from the file.

    Why: drawing fc6/fc7's random weights, which the file's then replaced, was most of a load, and the model's
    tensors were a second copy beside the file's. Intel Xeon, one thread, a process loading one checkpoint:
    ``dath_alexnet_32`` 0.67-0.75 s and 1.62 GB peak before, 0.31 s and 1.17 GB now; ``admth_cnnf_multi``
    1.22-1.31 s and 2.45 GB before, 0.60 s and 1.59 GB now. An architecture that cannot be built on the meta device, or
    keeps tensors a state dict leaves out (non-persistent buffers, as some timm backbones of ``hash_backbone``
    have), is built as usual, with its own initial values for them.
    """
    try:
        model = timm.create_model(arch, pretrained=False, device='meta', **kwargs)
    except Exception:  # noqa: BLE001  (one that needs real tensors to build: built as usual below, which raises
        model = None  # whatever error is real)
    if model is not None:
        saved = set(model.state_dict())
        if all(name in saved for name, _ in chain(model.named_parameters(), model.named_buffers())):
            return model
    return timm.create_model(arch, pretrained=False, **kwargs)


def adopt_recorded_cfg(model: torch.nn.Module, config: Dict[str, Any]) -> None:
    """Give ``model`` the ``pretrained_cfg`` its checkpoint records, as timm's ``local-dir:`` does.

    Why: a model rebuilt by name carries the architecture's default cfg (224x224); the checkpoint records the
    size its weights were trained at (64 for the zoo's), and ``resolve_data_config(model=model)`` must give that
    one, or every caller that does not pass a size encodes images the weights never saw (the zoo's
    ``dath_alexnet_32``: mAP@all 0.26 at 224 on 2,000 x 10,000 test x training images, 0.90 at 64 on 500 x 3,000).
    """
    recorded = config.get('pretrained_cfg')
    if not isinstance(recorded, dict):
        return
    cfg = dict(getattr(model, 'pretrained_cfg', None) or {})
    for key, value in recorded.items():
        cfg[key] = tuple(value) if key in _TUPLE_CFG_KEYS and isinstance(value, list) else value
    model.pretrained_cfg = cfg
    model.default_cfg = cfg
