"""One trainer for every model: the papers' objectives and optimisers, resumable bit for bit.

A run folder holds ``checkpoint/`` (timm Hub layout, refreshed every epoch), ``last/`` (the full
training state, every epoch, atomically) and ``train_log.jsonl`` (one JSON record per logged
step and per epoch). The data order of epoch e is a permutation seeded by (seed, e), the
transforms are deterministic and the torch RNG (dropout) is saved with the state, so a run that
is killed and resumed with ``resume=True`` ends with exactly the weights of an uninterrupted run.
Under ``torchrun`` it trains data-parallel (DDP; gloo on CPU, NCCL on GPU) and rank 0 writes.
"""
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from timm.data import create_transform, resolve_data_config
from tqdm import tqdm

from deephash_zoo.hub.checkpoint import save_checkpoint
from deephash_zoo.losses import ADMTHLoss, DATHLoss

from .state import load_train_state, save_train_state

__all__ = ['TrainConfig', 'train', 'family_defaults', 'HashObjective', 'epoch_records']


@dataclass
class TrainConfig:
    """Everything a run depends on; ``None`` means "the paper's default for this model family"."""

    model: str = 'dath_alexnet_32'
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
    img_size: Optional[int] = None
    subset: Optional[int] = None
    max_steps: Optional[int] = None
    seed: int = 0
    num_workers: int = 0
    init: Optional[str] = None
    resume: bool = False
    log_every: int = 10
    amp: bool = True
    device: str = 'auto'
    loss_args: Dict[str, float] = field(default_factory=dict)
    save_state: bool = True  # False: no resumable last/ (for callers that never resume, e.g. experiments)


def family_defaults(model_name: str) -> Dict[str, Any]:
    """The papers' settings. DATH: RMSProp, lr 1e-5, weight decay 1e-5, batch 128 (Section 4).
    ADMTH: SGD, batch 128, lr divided by 100 every 30 epochs (Section 3.2); its initial lr of 0.15
    diverged with our mean-normalised losses (loss ~5e30 within the first epoch on the mosaic), so
    the default is 1e-3 with momentum 0.9, which trains (see the README)."""
    if model_name.startswith('dath'):
        return dict(family='dath', optimizer='rmsprop', lr=1e-5, weight_decay=1e-5, batch_size=128,
                    lr_step_epochs=0, lr_decay=1.0)
    if model_name.startswith(('admth', 'dmlh')):
        return dict(family='admth', optimizer='sgd', lr=1e-3, weight_decay=0.0, batch_size=128,
                    lr_step_epochs=30, lr_decay=0.01)
    raise ValueError(f'no training recipe for {model_name!r}; expected a dath*, admth* or dmlh* model')


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


class _EpochPermutation(torch.utils.data.Sampler):
    """Shuffled order of epoch e = permutation seeded by (seed, e): reproducible after a resume."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_optimizer(name: str, params: List[nn.Parameter], lr: float, wd: float, momentum: float):
    if name == 'rmsprop':
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == 'sgd':
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=momentum)
    if name == 'adam':
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; expected 'rmsprop', 'sgd' or 'adam'")


def _weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_init(model: nn.Module, path: str, log: Callable[[str], None]) -> None:
    """ImageNet (or any) initialisation from a safetensors file in this model's layout."""
    from safetensors.torch import load_file

    state = load_file(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f'{path}: no tensor fits {type(model).__name__}; convert it first (deephash_zoo.hub)')
    model.load_state_dict(usable, strict=False)
    log(f'initialised {len(usable)}/{len(own)} tensors from {path}')


class _RunLog:
    """JSON-lines log on rank 0; messages to the progress bar's stream."""

    def __init__(self, path: Optional[Path], rank: int) -> None:
        self.path, self.rank = path, rank
        self.records: List[Dict[str, Any]] = []

    def record(self, **rec: Any) -> None:
        self.records.append(rec)
        if self.rank == 0 and self.path is not None:
            with open(self.path, 'a') as f:
                f.write(json.dumps(rec) + '\n')

    def message(self, text: str) -> None:
        if self.rank == 0:
            tqdm.write(text)
        self.record(event='message', text=text)


def epoch_records(run_dir: Path) -> List[Dict[str, Any]]:
    """The per-epoch records (seconds, images/s, mean losses) of a run folder's ``train_log.jsonl``."""
    lines = (Path(run_dir) / 'train_log.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get('event') == 'epoch']


def _prepare_data(cfg: TrainConfig, model: nn.Module):
    from deephash_zoo.data import build_retrieval_data

    data_cfg = resolve_data_config(model=model)
    if cfg.img_size:
        data_cfg['input_size'] = (3, cfg.img_size, cfg.img_size)
    transform = create_transform(**data_cfg)
    splits = build_retrieval_data(cfg.data, root=cfg.data_root, seed=cfg.seed)
    dataset = splits['train']
    if cfg.subset:
        if cfg.subset > len(dataset):
            raise ValueError(f'--subset {cfg.subset} is larger than the training set ({len(dataset)} items)')
        order = np.random.default_rng(cfg.seed).permutation(len(dataset))[:cfg.subset]
        dataset = dataset.subset(np.sort(order))
    dataset.transform = transform
    return dataset, data_cfg


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns a summary (also the last line of the log)."""
    distributed = int(os.environ.get('WORLD_SIZE', '1')) > 1
    rank = int(os.environ.get('RANK', '0'))
    use_cuda = torch.cuda.is_available() and cfg.device in ('auto', 'cuda')
    if distributed:
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if use_cuda else 'cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    world = dist.get_world_size() if distributed else 1

    defaults = family_defaults(cfg.model)
    settings = {k: getattr(cfg, k) if getattr(cfg, k) is not None else defaults[k]
                for k in ('optimizer', 'lr', 'weight_decay', 'batch_size', 'lr_step_epochs', 'lr_decay')}
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (out / 'train_log.jsonl').exists():
            (out / 'train_log.jsonl').unlink()
    log = _RunLog(out / 'train_log.jsonl', rank)
    _seed_everything(cfg.seed)

    probe = timm.create_model(cfg.model, pretrained=False, device='meta')
    dataset, data_cfg = _prepare_data(cfg, probe)
    num_labels = int(dataset.labels.shape[1])
    model_kwargs = dict(num_labels=num_labels) if defaults['family'] == 'dath' else {}
    _seed_everything(cfg.seed)
    model = timm.create_model(cfg.model, pretrained=False, **model_kwargs)
    if cfg.init:
        _load_init(model, cfg.init, log.message)
    elif not cfg.resume:
        log.message('no --init given: training from scratch (random initialisation)')
    loss_args = dict(cfg.loss_args)
    if defaults['family'] == 'dath':
        loss = DATHLoss(**loss_args)
    else:
        loss = ADMTHLoss(bits=model.bits, **loss_args)
    objective = HashObjective(model, loss, single_label=bool(dataset.single_label)).to(device)
    if use_cuda:
        objective = objective.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(settings['optimizer'], list(objective.parameters()), settings['lr'],
                                 settings['weight_decay'], cfg.momentum)
    scheduler = None
    if settings['lr_step_epochs']:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings['lr_step_epochs'], settings['lr_decay'])

    start_epoch, step = 0, 0
    if cfg.resume:
        meta = load_train_state(out / 'last', model, loss, optimizer, scheduler)
        start_epoch, step = meta['epoch'], meta['step']
        log.message(f'resumed from {out / "last"} at epoch {start_epoch}, step {step}')
    train_module: nn.Module = objective
    if distributed:
        train_module = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if use_cuda else None)

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
    scaler = torch.amp.GradScaler('cuda', enabled=use_cuda and cfg.amp)
    run_config = dict(asdict(cfg), **settings, world_size=world, data_config={k: list(v) if isinstance(v, tuple)
                                                                                else v for k, v in data_cfg.items()})
    log.record(event='start', config=run_config, num_train=len(dataset), num_labels=num_labels,
               steps_per_epoch=len(loader))

    stop = False
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_module.train()
        sums: Dict[str, float] = {}
        seen, t0, t_first, seen_first = 0, time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=rank != 0, leave=False)
        for images, labels in bar:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if use_cuda:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_cuda and cfg.amp):
                parts = train_module(images, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts['loss']).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            values = {k: float(v.detach()) for k, v in parts.items()}
            if not math.isfinite(values['loss']):
                raise FloatingPointError(f'loss became {values["loss"]} at step {step}; lower --lr')
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
        seconds = time.perf_counter() - t0
        if scheduler is not None:
            scheduler.step()
        means = {k: v / max(seen, 1) for k, v in sums.items()}
        steady = (seen - seen_first) * world / (t0 + seconds - t_first) if seen > seen_first else None
        log.record(event='epoch', epoch=epoch, step=step, seconds=seconds, images_per_s=seen * world / seconds,
                   steady_images_per_s=steady, **means)
        if rank == 0:
            log.message(f'epoch {epoch + 1}/{cfg.epochs}: ' + ', '.join(f'{k} {v:.4f}' for k, v in means.items())
                        + f', {seconds:.1f} s')
            done_epochs = epoch + 1 if not stop else epoch
            if cfg.save_state:
                save_train_state(out / 'last', model, loss, optimizer, scheduler, epoch=done_epochs, step=step,
                                 extra=dict(complete=not stop))
            save_checkpoint(model, out / 'checkpoint', dataset=cfg.data, training=run_config)
        if stop:
            break

    digest = _weights_digest(objective)
    digests = [digest]
    if distributed:
        digests = [None] * world
        dist.all_gather_object(digests, digest)
        dist.barrier()
    summary = dict(event='end', epochs=cfg.epochs, step=step, replica_sha256=digests,
                   replicas_identical=len(set(digests)) == 1, checkpoint=str(out / 'checkpoint'))
    log.record(**summary)
    if distributed:
        dist.destroy_process_group()
    return summary
