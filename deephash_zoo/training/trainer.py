"""One trainer for every model: the papers' objectives and optimisers, resumable bit for bit.

A run folder holds ``checkpoint/`` (timm Hub layout, refreshed every epoch), ``last/`` (the full
training state, every epoch, atomically) and ``train_log.jsonl`` (one JSON record per logged
step and per epoch). The data order of epoch e is a permutation seeded by (seed, e), the
transforms are deterministic and the torch RNG (dropout) is saved with the state, so a run that
is killed and resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run.
Under ``torchrun`` it trains data-parallel (DDP; gloo on CPU, NCCL on GPU) and rank 0 writes.

Two stages share this loop: ``stage='hash'`` trains a registered hash model with its paper's
objective; ``stage='pretrain'`` trains a bare trunk as a classifier (:class:`TrunkClassifier`) and
writes ``OUT/trunk.safetensors``, the initialisation the ``scratch`` recipe starts hashing from.
Unset settings come from the named recipe (:mod:`deephash_zoo.training.recipes`).
"""
import inspect
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.data import create_transform, resolve_data_config
from tqdm import tqdm

from deephash_zoo.data.protocols import absolute_data_name, labels_survive_flip
from deephash_zoo.hub.checkpoint import save_checkpoint
from deephash_zoo.losses import ADMTHLoss, DATHLoss
from deephash_zoo.models.attention import open_attention_gates
from deephash_zoo.models.pretrain import TRUNK_FORMAT, TrunkClassifier, expand_trunk_state
from deephash_zoo.models.trunks import MIN_INPUT_SIZE
from deephash_zoo.utils import (
    checked_device,
    non_finite_tensors,
    restore_dir,
    run_machine,
    safetensors_bytes,
    state_sha256,
    write_atomic,
)

from .recipes import PRETRAIN, RECIPES, Recipe, family_of, get_recipe
from .state import load_train_state, save_train_state
from .tapfold import TapFold

__all__ = ['TrainConfig', 'train', 'family_defaults', 'resolve_settings', 'HashObjective', 'epoch_records',
           'TRUNK_FILE']

TRUNK_FILE = 'trunk.safetensors'  # what the pretraining stage writes in its run folder


@dataclass
class TrainConfig:
    """Everything a run depends on; ``None`` means "the recipe's setting for this model family".

    ``model`` is a registered hash model, or for ``stage='pretrain'`` a trunk ('alexnet', 'cnnf').
    """

    model: str = 'dath_alexnet_32'
    recipe: str = 'paper'
    stage: str = 'hash'
    data: str = 'fashion-mnist'
    out: str = 'runs/train'
    data_root: Optional[str] = None
    epochs: int = 1
    batch_size: Optional[int] = None
    optimizer: Optional[str] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    momentum: float = 0.9
    lr_step_epochs: Optional[int] = None
    lr_decay: Optional[float] = None
    lr_schedule: Optional[str] = None
    warmup_steps: Optional[int] = None
    loss_reduction: Optional[str] = None
    gamma_ramp_steps: Optional[int] = None
    drop_rate: Optional[float] = None
    flip: Optional[bool] = None
    nesterov: Optional[bool] = None
    center_hash: Optional[bool] = None
    grad_clip: Optional[float] = None
    img_size: Optional[int] = None
    label_weight: Optional[float] = None
    attn_gate_init: Optional[float] = None
    subset: Optional[int] = None
    max_steps: Optional[int] = None
    seed: int = 0
    data_seed: Optional[int] = None  # the seed of the benchmark's split and --subset draw (None: ``seed``)
    num_workers: int = 0
    init: Optional[str] = None
    resume: bool = False
    overwrite: bool = False  # replace a run already in ``out`` (without it, and without resume, it is refused)
    log_every: int = 10
    amp: bool = True
    device: str = 'auto'
    loss_args: Dict[str, float] = field(default_factory=dict)
    save_state: bool = True  # False: no resumable last/ (for callers that never resume, e.g. experiments)
    progress: bool = True  # False: no progress bar (logs of long background runs)


def family_defaults(model_name: str, recipe: str = 'paper') -> Dict[str, Any]:
    """The settings of ``recipe`` for ``model_name``'s family, with ``family`` ('dath' or 'admth')."""
    return dict(family=family_of(model_name), **get_recipe(recipe, model_name).as_dict())


def resolve_settings(cfg: TrainConfig) -> Dict[str, Any]:
    """Every recipe setting of a run: what ``cfg`` sets, else the recipe's value for its family or stage."""
    if cfg.stage not in ('hash', 'pretrain'):
        raise ValueError(f"stage must be 'hash' or 'pretrain', got {cfg.stage!r}")
    if cfg.recipe not in RECIPES:
        raise ValueError(f'unknown recipe {cfg.recipe!r}; expected one of {", ".join(RECIPES)}')
    recipe: Recipe = PRETRAIN if cfg.stage == 'pretrain' else get_recipe(cfg.recipe, cfg.model)
    settings = recipe.as_dict()
    for key in settings:
        if getattr(cfg, key) is not None:
            settings[key] = getattr(cfg, key)
    if settings['lr_schedule'] not in ('constant', 'step', 'cosine'):
        raise ValueError(f"lr_schedule must be 'constant', 'step' or 'cosine', got {settings['lr_schedule']!r}")
    if not settings['label_weight'] >= 0:
        raise ValueError(f"label_weight must be >= 0 (0: the paper's objective), got {settings['label_weight']}")
    if settings['label_weight'] and (cfg.stage == 'pretrain' or family_of(cfg.model) == 'dath'):
        where = 'the pretraining stage is a classifier already' if cfg.stage == 'pretrain' else \
            "DATH's label term is its own J2 (weighted by --loss-arg beta)"
        raise ValueError(f'--label-weight is for the ADMTH family\'s hashing stage: {where}')
    if settings['flip'] and not labels_survive_flip(cfg.data):
        if cfg.flip:
            raise ValueError(f'--flip: the labels of {cfg.data} say where in the image a class sits, and a horizontal '
                             'flip swaps left and right; train it without flips (--no-flip)')
        settings['flip'] = False  # the recipe's flips would make the labels wrong
    _check_ranges(cfg, settings)
    if not math.isfinite(settings['attn_gate_init']):
        raise ValueError(f"attn_gate_init must be a finite number, got {settings['attn_gate_init']}")
    if settings['attn_gate_init'] and (cfg.stage == 'pretrain' or family_of(cfg.model) != 'dath'):
        where = 'the pretraining stage trains a trunk without attention' if cfg.stage == 'pretrain' else \
            "the ADMTH family's SE attention has no gate"
        raise ValueError(f"--attn-gate-init is for the DATH family's hashing stage: {where}")
    return settings


def _check_ranges(cfg: TrainConfig, settings: Dict[str, Any]) -> None:
    """Refuse a numeric setting outside its meaning before anything runs: a negative ``--grad-clip`` reaches
    ``clip_grad_norm_`` as a negative scale and turns every step uphill, a negative warm-up divides by it."""
    def refuse(flag: str, value: Any, expected: str) -> None:
        raise ValueError(f'--{flag} {value}: must be {expected}')

    def finite(value: float) -> bool:  # in float32, as the fused optimiser takes it (1e39 overflowed in torch)
        return math.isfinite(value) and abs(value) <= torch.finfo(torch.float32).max

    for flag, value in (('epochs', cfg.epochs), ('subset', cfg.subset), ('max-steps', cfg.max_steps),
                        ('batch-size', cfg.batch_size), ('log-every', cfg.log_every)):
        if value is not None and value < 1:
            refuse(flag, value, 'at least 1')
    if settings['lr_decay'] is not None and not (finite(settings['lr_decay']) and settings['lr_decay'] > 0):
        refuse('lr-decay', settings['lr_decay'], 'a finite number > 0')
    if not (finite(settings['lr']) and settings['lr'] >= 0):  # 0 trains nothing: a run that records its start
        refuse('lr', settings['lr'], 'a finite number >= 0')
    for key, flag in (('weight_decay', 'weight-decay'), ('grad_clip', 'grad-clip')):
        if not (finite(settings[key]) and settings[key] >= 0):
            refuse(flag, settings[key], 'a finite number >= 0 (0: none)')
    if not (finite(cfg.momentum) and cfg.momentum >= 0):
        refuse('momentum', cfg.momentum, 'a finite number >= 0')
    for key, flag in (('warmup_steps', 'warmup-steps'), ('gamma_ramp_steps', 'gamma-ramp-steps'),
                      ('lr_step_epochs', 'lr-step-epochs')):
        if settings[key] < 0:
            refuse(flag, settings[key], '>= 0 (0: none)')
    if settings['drop_rate'] is not None and not 0 <= settings['drop_rate'] < 1:
        refuse('drop-rate', settings['drop_rate'], 'in [0, 1)')
    if settings['img_size'] is not None and settings['img_size'] < MIN_INPUT_SIZE:
        refuse('img-size', settings['img_size'], f'at least {MIN_INPUT_SIZE} (below it the last max pool has no room)')
    if cfg.num_workers < 0:
        refuse('workers', cfg.num_workers, '>= 0')


def _lr_factor(step: int, total_steps: int, steps_per_epoch: int, settings: Dict[str, Any]) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): the linear warm-up times the schedule, both
    from step 0 (the zoo's recorded runs trained so; a run shorter than the warm-up stays below the base lr)."""
    warmup = settings['warmup_steps']
    factor = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if settings['lr_schedule'] == 'cosine':
        factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    elif settings['lr_schedule'] == 'step' and settings['lr_step_epochs']:
        factor *= settings['lr_decay'] ** (step // (settings['lr_step_epochs'] * steps_per_epoch))
    return factor


class HashObjective(nn.Module):
    """Model + loss in one module, so DDP synchronises the loss's own parameters (ADMTH's Q_k) too."""

    def __init__(self, model: nn.Module, loss: nn.Module, single_label: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.single_label = single_label

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        target = labels.argmax(dim=1) if self.single_label else labels
        codes = self.model(images)
        if isinstance(self.loss, DATHLoss):
            return self.loss(codes.float(), self.model.label_logits(codes).float(), target)
        return self.loss(codes.float(), target)


class ClassifierObjective(nn.Module):
    """The pretraining stage's loss: cross-entropy over the labels (binary, summed over labels, when
    an item may carry several), with the batch's top-1 accuracy for the log (single-label data)."""

    def __init__(self, model: nn.Module, single_label: bool) -> None:
        super().__init__()
        self.model = model
        self.loss = nn.Module()  # no loss parameters: keeps the state files' layout of the hash stage
        self.single_label = single_label

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self.model(images).float()
        if not self.single_label:
            loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction='none').sum(1).mean()
            return {'loss': loss}
        target = labels.argmax(dim=1)
        return {'loss': F.cross_entropy(logits, target),
                'accuracy': (logits.detach().argmax(dim=1) == target).float().mean()}


class _EpochPermutation(torch.utils.data.Sampler):
    """Shuffled order of epoch e = permutation seeded by (seed, e): reproducible after a resume."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.skip = n, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Epoch ``epoch``'s order without its first ``skip`` items (those a stopped run already trained on)."""
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist()[self.skip:])

    def __len__(self) -> int:
        return self.n - self.skip


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_optimizer(name: str, params: List[Any], lr: float, wd: float, momentum: float,
                     nesterov: bool = False, fused: bool = True):
    """``params``: parameters, or optimiser groups (dicts) whose own settings override these. ``fused=False``
    only for the step benchmark's "before" arm."""
    if name == 'rmsprop':
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == 'sgd':
        kwargs = dict(lr=lr, weight_decay=wd, momentum=momentum, nesterov=nesterov and momentum > 0)
        if not fused:
            return torch.optim.SGD(params, foreach=True, **kwargs)
        try:  # one fused pass over each tensor: 26 ms a step for AlexNet's 57 M weights instead of 124 ms (2 cores)
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # a torch or device without fused SGD: the same update
            return torch.optim.SGD(params, **kwargs)
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; expected 'rmsprop', 'sgd' or 'adam'")


def _load_init(model: nn.Module, path: str, log: Callable[[str], None]) -> None:
    """Initialisation from a safetensors file: a trunk file of the pretraining stage (copied into every
    stream / branch), or weights in this model's layout (converted ImageNet weights, another run)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path, 'pt') as f:
            meta = f.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{path}: not a readable safetensors file ({e})') from e
    if meta.get('format') == TRUNK_FORMAT:
        usable, used = expand_trunk_state(state, meta.get('arch', ''), model)
        model.load_state_dict(usable, strict=False)
        log(f"initialised {len(usable)}/{len(model.state_dict())} tensors from the {meta.get('arch')} trunk file "
            f"{path} ({used} trunk tensors, pretrained on {meta.get('data')}); attention, hash layer and "
            'label classifier start fresh')
        return
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    misfit = sorted(k for k in state if k not in usable)  # another model's weights: names or shapes differ
    if not usable or misfit:
        detail = f'{len(misfit)} of its {len(state)} tensors do not fit (first: {misfit[0]})' if misfit else \
            'no tensor fits'
        raise ValueError(f'{path}: {detail} {type(model).__name__} {getattr(model, "bits", "")}; --init takes a '
                         'trunk file of deephash-pretrain or weights in this model\'s layout (deephash-convert)')
    model.load_state_dict(usable, strict=False)
    log(f'initialised {len(usable)}/{len(own)} tensors from {path}')


def _save_trunk(model: TrunkClassifier, path: Path, cfg: TrainConfig, data_cfg: Dict[str, Any]) -> None:
    """The pretraining stage's product: the trunk's weights with what they were trained on, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.trunk_state().items()}
    meta = dict(format=TRUNK_FORMAT, arch=model.arch, data=cfg.data, seed=str(cfg.seed),
                img_size=str(data_cfg['input_size'][-1]), subset=str(cfg.subset))
    write_atomic(path, safetensors_bytes(tensors, meta))  # the same trunk, the same bytes


class _RunLog:
    """JSON-lines log on rank 0; messages to the progress bar's stream.

    Records are held in memory until :meth:`open`: a run that fails while it starts (bad data, bad weights)
    leaves the folder's previous log as it was.
    """

    def __init__(self, path: Optional[Path], rank: int) -> None:
        self.path, self.rank = path, rank
        self.records: List[Dict[str, Any]] = []
        self.opened = False

    def open(self, fresh: bool) -> None:
        """Start writing: a new file when ``fresh``, else append (a resumed run); then the held records."""
        if self.rank == 0 and self.path is not None:
            with open(self.path, 'w' if fresh else 'a') as f:
                f.writelines(json.dumps(rec) + '\n' for rec in self.records)
        self.opened = True

    def record(self, **rec: Any) -> None:
        self.records.append(rec)
        if self.opened and self.rank == 0 and self.path is not None:
            with open(self.path, 'a') as f:
                f.write(json.dumps(rec) + '\n')

    def message(self, text: str) -> None:
        if self.rank == 0:
            tqdm.write(text)
        self.record(event='message', text=text)


class NonFiniteTrainingError(ValueError):
    """The loss or the weights became NaN or infinite: the run stops, nothing of it is saved."""


_RUN_PRODUCTS = ('checkpoint', 'last', 'train_log.jsonl', TRUNK_FILE)
_RUN_TEMPORARIES = ('.checkpoint.*', '.last.*', f'.{TRUNK_FILE}.*')


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start over a run already in ``out`` unless asked to continue it or replace it."""
    if resume and overwrite:
        raise ValueError('--resume continues the run in --out and --overwrite replaces it: give one of them')
    held = [name for name in _RUN_PRODUCTS if (out / name).exists()]
    if held and not resume and not overwrite:
        resumable = '--resume continues it, ' if 'last' in held else \
            'it saved no training state to continue (it stopped before its first save); '
        raise ValueError(f'{out}: holds a run already ({", ".join(held)}); {resumable}--overwrite replaces it, or '
                         'choose another --out')


# what a resumed run may change: how long it goes on, and how it runs and reports, not what it trains
_RESUMABLE_CHANGES = ('epochs', 'max_steps', 'data_root', 'num_workers', 'resume', 'overwrite', 'log_every', 'amp',
                      'device', 'save_state', 'progress', 'out')


def run_identity(cfg: TrainConfig, settings: Dict[str, Any]) -> Dict[str, Any]:
    """The settings that decide what a run trains (recipe settings resolved, seeds, data, initialisation), as
    JSON values: a resumed run must give the same, or it would not be the run it continues."""
    identity = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES}
    identity.update(settings)
    identity['data_seed'] = cfg.seed if cfg.data_seed is None else cfg.data_seed
    return json.loads(json.dumps(identity))


def _check_resume_identity(last: Path, identity: Dict[str, Any]) -> None:
    """Refuse to continue the run saved in ``last`` with other settings, naming each difference (a state saved
    before runs recorded their settings is taken as it is)."""
    try:
        saved = json.loads((last / 'state.json').read_text()).get('extra', {}).get('settings')
    except (OSError, ValueError):
        return  # no state, or an unreadable one: load_train_state says which
    if not saved:
        return
    differ = [k for k in sorted(set(saved) | set(identity)) if saved.get(k) != identity.get(k)]
    if differ:
        listed = '; '.join(f'{k} {identity.get(k)!r} (the run: {saved.get(k)!r})' for k in differ[:4])
        more = f' and {len(differ) - 4} more' if len(differ) > 4 else ''
        raise ValueError(f'{last}: --resume continues a run with its own settings, and these differ: {listed}{more}; '
                         'give the run\'s settings (its config.json records them), or train a new run in another '
                         '--out (--init can start it from this run\'s checkpoint)')


def _claim_run_folder(out: Path, resume: bool, log: Callable[[str], None]) -> None:
    """Once the run has started: create ``out``, clear what an earlier run left (everything it wrote when
    replacing it; the hidden temporaries of a killed save always)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ('checkpoint', 'last'):
        if restore_dir(out / name):
            log(f'{out / name}: restored the previous version a killed save had set aside')
    stale = [p for pattern in _RUN_TEMPORARIES for p in out.glob(pattern)]
    stale += [p for p in out.glob('.*.old-*')]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if stale:
        log(f'removed {len(stale)} temporary file(s) left by a killed run: {", ".join(p.name for p in stale[:3])}')
    if not resume:
        for name in _RUN_PRODUCTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _kept_state(out: Path) -> str:
    """What a stopped run leaves to resume from, for its error message."""
    try:
        meta = json.loads((out / 'last' / 'state.json').read_text())
    except (OSError, ValueError):
        return 'nothing of this run was saved'
    return f'{out / "last"} keeps the last good state (epoch {meta["epoch"]}, step {meta["step"]})'


def _check_finite(values: Dict[str, float], model: nn.Module, step: int, out: Path, weights: bool) -> None:
    """Stop the run with one line naming the step and the loss part (or weights) that became NaN / inf."""
    bad = [f'{k} = {v}' for k, v in values.items() if not math.isfinite(v)]
    if not bad and weights:
        tensors = non_finite_tensors(model.state_dict())
        if tensors:
            bad = [f'weights ({len(tensors)} tensors, first {tensors[0]})']
    if bad:
        raise NonFiniteTrainingError(f'step {step}: {", ".join(bad)} is not finite; training stopped before '
                                     f'saving it; {_kept_state(out)}; lower --lr or set --grad-clip')


def epoch_records(run_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records (seconds, images/s, mean losses) of a run folder's ``train_log.jsonl``."""
    lines = (Path(run_dir) / 'train_log.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get('event') == 'epoch']


def _prepare_data(cfg: TrainConfig, model: nn.Module, flip: bool, img_size: Optional[int]):
    from torchvision import transforms

    from deephash_zoo.data import build_retrieval_data

    data_cfg = resolve_data_config(model=model)
    if img_size:
        data_cfg['input_size'] = (3, img_size, img_size)
    transform = create_transform(**data_cfg)
    if flip:
        transform = transforms.Compose([transforms.RandomHorizontalFlip(), transform])
    data_seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    splits = build_retrieval_data(cfg.data, root=cfg.data_root, seed=data_seed)
    dataset = splits['train']
    if cfg.subset:
        if cfg.subset > len(dataset):
            raise ValueError(f'--subset {cfg.subset} is larger than the training set ({len(dataset)} items)')
        order = np.random.default_rng(data_seed).permutation(len(dataset))[:cfg.subset]
        dataset = dataset.subset(np.sort(order))
    dataset.transform = transform
    return dataset, data_cfg


_DATA_PROBE = {'alexnet': 'dath_n_16', 'cnnf': 'dmlh_cnnf_multi'}  # a trunk sees what its hash models see


def _loss_class(model: str) -> type:
    return DATHLoss if family_of(model) == 'dath' else ADMTHLoss


def _loss_defaults(loss_cls: type) -> Dict[str, Any]:
    """A loss's hyper-parameters (what ``--loss-arg`` may set) with their defaults: its arguments but the code
    lengths, label count, reduction and ADMTH's label term, which the run sets from elsewhere."""
    return {name: p.default for name, p in inspect.signature(loss_cls).parameters.items()
            if name not in ('bits', 'num_labels', 'reduction', 'label_weight')}


def _check_loss_args(cfg: TrainConfig) -> None:
    """Refuse a ``--loss-arg`` name the family's loss does not take (before any data is read)."""
    if not cfg.loss_args:
        return
    if cfg.stage == 'pretrain':
        raise ValueError('--loss-arg: the pretraining stage trains with cross-entropy, which takes none')
    loss_cls = _loss_class(cfg.model)
    if 'label_weight' in cfg.loss_args:
        raise ValueError('--loss-arg label_weight: set it with --label-weight (a recipe setting, kept in config.json)')
    defaults = _loss_defaults(loss_cls)
    unknown = sorted(set(cfg.loss_args) - set(defaults))
    if unknown:
        raise ValueError(f'--loss-arg {unknown[0]}: {loss_cls.__name__} has no such hyper-parameter '
                         f'(it takes {", ".join(sorted(defaults))})')
    for name, value in cfg.loss_args.items():
        if isinstance(defaults[name], str):  # a choice (multi_label_form): the loss names the ones it takes
            if not isinstance(value, str):
                raise ValueError(f'--loss-arg {name}={value:g}: takes a word (default {defaults[name]!r})')
        elif isinstance(value, str) or not math.isfinite(float(value)):
            raise ValueError(f'--loss-arg {name}={value}: must be a finite number')


def loss_hyperparameters(cfg: TrainConfig) -> Dict[str, Any]:
    """The hashing loss's hyper-parameters as the run uses them (its defaults where ``--loss-arg`` gave none):
    config.json records ``loss_args`` as given, which left the defaults (DATH's beta, gamma, margin) unsaid."""
    if cfg.stage == 'pretrain':
        return {}
    return dict(_loss_defaults(_loss_class(cfg.model)), **cfg.loss_args)


def _build_objective(cfg: TrainConfig, settings: Dict[str, Any], num_labels: int, single_label: bool,
                     log: Callable[[str], None]) -> nn.Module:
    """The stage's model and loss in one module (weights initialised, ``--init`` applied)."""
    model_kwargs: Dict[str, Any] = {}
    if settings['drop_rate'] is not None:
        model_kwargs['drop_rate'] = settings['drop_rate']
    if cfg.stage == 'pretrain':
        return ClassifierObjective(TrunkClassifier(cfg.model, num_labels, **model_kwargs), single_label)
    family = family_of(cfg.model)
    if family == 'dath':
        model_kwargs['num_labels'] = num_labels
    model = timm.create_model(cfg.model, pretrained=False, **model_kwargs)
    if cfg.init:
        _load_init(model, cfg.init, log)
    if settings['attn_gate_init'] and not cfg.resume:
        opened = open_attention_gates(model, settings['attn_gate_init'])
        log(f"attention gates opened: {opened} DANet module(s) start with gamma = {settings['attn_gate_init']:g}"
            if opened else f'{cfg.model} has no DANet attention: --attn-gate-init has nothing to open')
        if not opened:
            settings['attn_gate_init'] = 0.0  # config.json and the card record what the run did
    if not cfg.init and not cfg.resume:
        hint = (' the paper recipe expects ImageNet weights (--init); from scratch, pretrain a trunk '
                '(deephash-pretrain) and use --recipe scratch --init TRUNK') if cfg.recipe == 'paper' else ''
        log(f'no --init given: training from scratch (random initialisation);{hint}')
    loss_args = dict(cfg.loss_args, reduction=settings['loss_reduction'])
    if family == 'dath':
        loss: nn.Module = DATHLoss(**loss_args)
    else:
        loss = ADMTHLoss(bits=model.bits, num_labels=num_labels, label_weight=settings['label_weight'], **loss_args)
    return HashObjective(model, loss, single_label=single_label)


def _center_hash_layer(model: nn.Module, dataset: Any, batch_size: int, log: Callable[[str], None]) -> None:
    """Centre the hash layers' biases on the pre-logits features of the first ``batch_size`` training items
    (eval mode: no dropout), see ``HashLayer.center_on``."""
    n = min(batch_size, len(dataset))
    images = torch.stack([dataset[i][0] for i in range(n)])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
    model.head.hash.center_on(features)
    model.train(was_training)
    log(f'hash layer biases centred on the features of {n} training images')


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns a summary (also the last line of the log)."""
    # local paths recorded absolute: the checkpoint's data name must find the data from any working folder
    cfg = replace(cfg, data=absolute_data_name(cfg.data),
                  data_root=os.path.abspath(cfg.data_root) if cfg.data_root else cfg.data_root)
    settings = resolve_settings(cfg)
    _check_loss_args(cfg)
    identity = run_identity(cfg, settings)  # before the build records what it did (attention gates)
    pretraining = cfg.stage == 'pretrain'
    if pretraining and cfg.model not in _DATA_PROBE:
        raise ValueError(f'the pretraining stage trains a trunk: expected one of {tuple(_DATA_PROBE)}, '
                         f'got {cfg.model!r}')
    distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
    rank = int(os.environ.get('RANK', '0'))
    # 'cuda' on a machine without one is refused, not trained on the CPU under a record saying 'cuda'
    use_cuda = checked_device(cfg.device).type == 'cuda'
    if distributed:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else 'cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    world = dist.get_world_size() if distributed else 1

    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f'--out {out}: is a file, not a run folder')
    check_run_folder(out, cfg.resume, cfg.overwrite)
    if cfg.resume:
        _check_resume_identity(out / 'last', identity)
    log = _RunLog(out / 'train_log.jsonl', rank)
    if cfg.flip is None and not labels_survive_flip(cfg.data):
        log.message(f'{cfg.data}: no random flips (its labels say where in the image a class sits)')
    _seed_everything(cfg.seed)

    probe = timm.create_model(_DATA_PROBE[cfg.model] if pretraining else cfg.model, pretrained=False, device='meta')
    dataset, data_cfg = _prepare_data(cfg, probe, settings['flip'], settings['img_size'])
    num_labels = int(dataset.labels.shape[1])
    _seed_everything(cfg.seed)
    objective = _build_objective(cfg, settings, num_labels, bool(dataset.single_label), log.message)
    model, loss = objective.model, objective.loss
    if settings['center_hash'] and not pretraining and not cfg.resume:
        _center_hash_layer(model, dataset, settings['batch_size'], log.message)
    objective = objective.to(device)
    if use_cuda:
        objective = objective.to(memory_format=torch.channels_last)
    # fc6 as its tap sums where the training size repeats its map: the same SGD updates (see tapfold), on CPU,
    # where updating every tap cost a quarter of a step; not under gradient clipping (it would see other norms)
    fold = TapFold.attach(model, int(data_cfg['input_size'][-1]), int(data_cfg['input_size'][0])) \
        if settings['optimizer'] == 'sgd' and not settings['grad_clip'] and not use_cuda else None
    params: List[Any] = list(objective.parameters())
    if fold:
        params = fold.param_groups(params, settings['lr'], settings['weight_decay'])
        log.message(f'fc6 trained as its tap sums ({len(fold.mlps)} layer(s)): the input size repeats its map')
    optimizer = _build_optimizer(settings['optimizer'], params, settings['lr'], settings['weight_decay'],
                                 cfg.momentum, settings['nesterov'])

    batch_size = settings['batch_size']
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=True, seed=cfg.seed,
                                                                  drop_last=True)
    else:
        sampler = _EpochPermutation(len(dataset), cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                                         num_workers=cfg.num_workers, pin_memory=use_cuda,
                                         persistent_workers=cfg.num_workers > 0)
    if len(loader) == 0:
        raise ValueError(f'batch size {batch_size} x {world} process(es) is larger than the training set '
                         f'({len(dataset)} items); lower --batch-size or raise --subset')
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: _lr_factor(i, total_steps, steps_per_epoch, settings))
    gamma = float(getattr(loss, 'gamma', 0.0))

    start_epoch, step = 0, 0
    if cfg.resume:
        if rank == 0 and restore_dir(out / 'last'):
            log.message(f'{out / "last"}: restored the state a killed save had set aside')
        meta = load_train_state(out / 'last', model, loss, optimizer, scheduler)
        start_epoch, step = meta['epoch'], meta['step']
        log.message(f'resumed from {out / "last"} at epoch {start_epoch}, step {step}')
    end_epoch = cfg.epochs
    if (cfg.max_steps and step >= cfg.max_steps) or start_epoch >= cfg.epochs:
        log.message(f'the run is at epoch {start_epoch}, step {step} already: nothing to train (raise --epochs or '
                    '--max-steps to go on)')
        end_epoch = start_epoch
    train_module: nn.Module = objective
    if distributed:
        train_module = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if use_cuda else None)

    if rank == 0:  # everything the run needs is ready: only now does it touch the folder
        _claim_run_folder(out, cfg.resume, log.message)
    log.open(fresh=not cfg.resume)
    scaler = torch.amp.GradScaler('cuda', enabled=use_cuda and cfg.amp)
    run_config = dict(asdict(cfg), **settings, world_size=world, loss=loss_hyperparameters(cfg),
                      machine=run_machine(device),
                      data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()})
    log.record(event='start', config=run_config, num_train=len(dataset), num_labels=num_labels,
               steps_per_epoch=steps_per_epoch)
    product = out / TRUNK_FILE if pretraining else out / 'checkpoint'

    stop = False
    epoch = start_epoch
    # a run stopped by --max-steps saved its state mid-epoch: its resume trains only that epoch's other batches
    done_in_epoch = max(0, step - start_epoch * steps_per_epoch)
    if done_in_epoch and distributed:
        raise ValueError(f'{out / "last"}: saved mid-epoch (step {step}); resuming it needs a single process')
    for epoch in range(start_epoch, end_epoch):
        if distributed:
            sampler.set_epoch(epoch)
        else:
            sampler.set_epoch(epoch, skip=done_in_epoch * batch_size if epoch == start_epoch else 0)
        train_module.train()
        sums: Dict[str, float] = {}
        seen, t0, t_first, seen_first = 0, time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=rank != 0 or not cfg.progress, leave=False)
        for images, labels in bar:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if use_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            if settings['gamma_ramp_steps'] and gamma:
                loss.gamma = gamma * min(1.0, step / settings['gamma_ramp_steps'])
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_cuda and cfg.amp):
                parts = train_module(images, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts['loss']).backward()
            if settings['grad_clip']:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(objective.parameters(), settings['grad_clip'])
            scaler.step(optimizer)
            scaler.update()
            if fold:
                fold.after_step(optimizer)
            scheduler.step()
            step += 1
            values = {k: float(v.detach()) for k, v in parts.items()}
            _check_finite(values, model, step, out, weights=False)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * len(images)
            seen += len(images)
            if not t_first:  # the first step pays one-off allocations (optimiser state, caches)
                t_first, seen_first = time.perf_counter(), seen
            bar.set_postfix({k: f'{v:.4f}' for k, v in values.items()})
            if step % cfg.log_every == 0 or step == 1:
                log.record(event='step', epoch=epoch, step=step, lr=optimizer.param_groups[0]['lr'], **values)
            if cfg.max_steps and step >= cfg.max_steps:
                stop = True
                break
        epoch_complete = step >= (epoch + 1) * steps_per_epoch  # --max-steps may fall on an epoch's last batch
        seconds = time.perf_counter() - t0
        means = {k: v / max(seen, 1) for k, v in sums.items()}
        steady = (seen - seen_first) * world / (t0 + seconds - t_first) if seen > seen_first else None
        log.record(event='epoch', epoch=epoch, step=step, seconds=seconds, images_per_s=seen * world / seconds,
                   steady_images_per_s=steady, **means)
        if rank == 0:
            log.message(f'epoch {epoch + 1}/{cfg.epochs}: ' + ', '.join(f'{k} {v:.4f}' for k, v in means.items())
                        + f', {seconds:.1f} s')
            done_epochs = epoch + 1 if epoch_complete else epoch
            _check_finite({}, model, step, out, weights=True)  # an update can break the weights, not the loss
            if cfg.save_state:
                save_train_state(out / 'last', model, loss, optimizer, scheduler, epoch=done_epochs, step=step,
                                 extra=dict(complete=epoch_complete, settings=identity))
            with fold.spread() if fold else nullcontext():  # products hold fc6 in its registered form
                if pretraining:
                    _save_trunk(model, product, cfg, data_cfg)
                else:
                    save_checkpoint(model, product, dataset=cfg.data, training=run_config)
        if stop:
            break

    with fold.spread() if fold else nullcontext():
        digest = state_sha256(objective.state_dict())
    digests = [digest]
    if distributed:
        digests = [None] * world
        dist.all_gather_object(digests, digest)
        dist.barrier()
    summary = dict(event='end', epochs=cfg.epochs, step=step, replica_sha256=digests,
                   replicas_identical=len(set(digests)) == 1, checkpoint=str(product))
    log.record(**summary)
    if distributed:
        dist.destroy_process_group()
    return summary
