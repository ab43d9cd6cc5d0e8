"""Run an experiment: every (arm, seed) cell, resumable, then the measurements no training needs.

Cells are appended to ``WORK/cells.jsonl`` as they finish, so ``resume=True`` after an interruption
re-trains only what is missing (each cell is deterministic given its seed); without it a file that holds cells is
refused, never emptied, and with it a cell of another experiment (data, budget or model) is refused by line. Each
new cell records the machine it ran on and when it finished. Seeds run in the outer loop: a run stopped early still
has every model at the first seed.

A budget with a pretraining stage (``pretrain_epochs``) first trains each trunk the arms need as a classifier
on the experiment's training set, into ``WORK/pretrain-ARCH/trunk.safetensors``, recorded in
``WORK/pretrain.jsonl``; every cell starts from it. ``resume=True`` keeps a finished trunk and continues an
interrupted pretraining from its ``last/`` state. ``init`` (a trunk file, e.g. the zoo's) replaces the stage.
"""
import datetime
import json
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import timm
import torch

import deephash_zoo
from deephash_zoo.data.protocols import MOSAIC_DATA
from deephash_zoo.training.recipes import trunk_of
from deephash_zoo.training.trainer import TRUNK_FILE, TrainConfig, epoch_records, train
from deephash_zoo.utils import (
    checked_device,
    cpu_model,
    load_average,
    run_machine,
    tensors_file_sha256,
    usable_cores,
)

from .budgets import Budget
from .plan import BITS, Arm, arms_for
from .runs import cell_settings, chance_level, run_cell
from .stages import StageLog

__all__ = ['SCHEMA_VERSION', 'KEEP_CHOICES', 'run_experiment', 'experiment_key', 'machine_info', 'init_digest',
           'experiment_models']

SCHEMA_VERSION = 1
KEEP_CHOICES = ('none', 'first-seed', 'all')
ENCODE_IMG_SIZE = 224  # the papers' input size, as in export/efficiency.md


def experiment_key(experiment: str, data: str, budget: str) -> str:
    """File stem and README marker name of one experiment's outputs, e.g. ``ablation-fashion-mnist-cpu-small``."""
    return f'{experiment}-{data}-{budget}'


def experiment_models(experiment: str) -> Set[str]:
    """Every model an arm of ``experiment`` trains, at any code length: what its cells file may hold."""
    return {m for arm in arms_for(experiment) for m in arm.distinct_models}


def _foreign(row: Dict[str, Any], experiment: str, data: str, budget: Budget) -> Optional[str]:
    """Why ``row`` is no cell of this experiment (another one's cells file, or a --work two experiments share),
    or None: mixed in, its numbers would join this table."""
    if not isinstance(row.get('model'), str) or not isinstance(row.get('seed'), int):
        return 'not a cell (it records no model and seed)'
    if row['model'] not in experiment_models(experiment):
        return f"the model {row['model']} belongs to no arm of the {experiment} experiment"
    if row.get('data', data) != data:
        return f"a cell trained on {row['data']}, not {data}"
    had = (row.get('settings') or {}).get('budget', budget.name)
    if had != budget.name:
        return f'a cell of the {had} budget, not {budget.name}'
    return None


def _load_cells(path: Path, experiment: str, data: str, budget: Budget) -> Dict[Tuple[str, int], Dict[str, Any]]:
    """The cells of ``path`` by (model, seed); a line that is no cell of this experiment is refused, naming it."""
    if not path.is_file():
        return {}
    done = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f'{path}, line {number}: not a JSON record ({e}); delete that line to run '
                             'its cell again') from None
        if not isinstance(row, dict):
            raise ValueError(f'{path}, line {number}: not a JSON record (a cell is a JSON object); delete that '
                             'line to run its cell again')
        why = _foreign(row, experiment, data, budget)
        if why:
            raise ValueError(f'{path}, line {number}: {why}; a cells file holds one experiment\'s cells: name '
                             'another --cells (or --work) for this one')
        done[(row['model'], row['seed'])] = row
    return done


def _cells_to_keep(cells_path: Path, resume: bool, experiment: str, data: str, budget: Budget,
                   say: Callable[[str], None]) -> Dict[Tuple[str, int], Dict[str, Any]]:
    """The cells ``resume`` goes on from, checked before any work. Without ``resume`` a file holding cells is
    refused, never emptied: it may be the only copy of hours of training (the README keeps them under version
    control)."""
    if not resume:
        if cells_path.is_file() and cells_path.read_text().strip():
            raise ValueError(f'{cells_path} already holds cells: --resume goes on from it; to start over, delete '
                             'it or name another file')
        return {}
    if not cells_path.is_file():
        say(f'{cells_path}: no cells file found, so every cell runs')
    return _load_cells(cells_path, experiment, data, budget)


def init_digest(path: str) -> str:
    """:func:`tensors_file_sha256` of an initial-weights file, or the one-line error deephash-train's --init gives
    for a file that is not readable safetensors (truncated, another format, missing)."""
    from safetensors import SafetensorError

    try:
        return tensors_file_sha256(path)
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{path}: not a readable safetensors file ({e})') from e


def _check_resumed(done: Dict[Tuple[str, int], Dict[str, Any]], expected: Dict[str, Dict[str, Any]],
                   cells_path: Path, unknown: Sequence[str] = ()) -> None:
    """Refuse to resume onto cells trained with other settings or from other starting weights: a table mixing
    them would compare recipes, not arms. ``unknown``: settings not known yet (a trunk still to pretrain)."""
    for (model, seed), row in done.items():
        if model not in expected:
            continue  # another arm's or code length's cell: kept, and not part of this table
        had = row.get('settings')
        if had is None:
            raise ValueError(f'{cells_path}: the cell {model} seed {seed} does not record its settings (written by an '
                             'earlier version); start without --resume or in a fresh --work folder')
        changed = sorted(k for k in set(had) | set(expected[model])
                         if k not in unknown and had.get(k) != expected[model].get(k))
        if changed:
            diff = '; '.join(f'{k}: {had.get(k)!r} -> {expected[model].get(k)!r}' for k in changed[:4])
            raise ValueError(f'{cells_path}: the cell {model} seed {seed} was trained with other settings ({diff}); '
                             'a table must not mix them: start without --resume or in a fresh --work folder')


def machine_info() -> Dict[str, Any]:
    return dict(cpu=cpu_model(), usable_cores=usable_cores(), torch_threads=torch.get_num_threads(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                deephash_zoo=deephash_zoo.__version__, load_average=load_average())


def _num_params(model: str) -> int:
    with torch.device('meta'):
        m = timm.create_model(model)
    return sum(p.numel() for p in m.parameters())


def _encoding(experiment: str, arms: List[Any], say: Callable[[str], None]) -> Dict[str, Any]:
    """Eager ms/image at batch 1 and 224x224 (the DATH paper's Table 5 measure): the first (shortest-code)
    model of each ablation arm, as the paper times 16-bit models; every model of the multi-task study."""
    from deephash_zoo.export.bench import eager_encoding_time

    out = {}
    for arm in arms:
        models = arm.distinct_models if experiment == 'multitask' else arm.distinct_models[:1]
        for model in models:
            say(f'encoding time: {model}')
            out[model] = eager_encoding_time(model, ENCODE_IMG_SIZE)
    return out


def pretraining_data(data: str) -> str:
    """The data a budget's pretraining stage trains the trunk on: the experiment's own, but for a mosaic
    ``mosaic-single``, its source Fashion-MNIST items one at a time on a random tile of the same black canvas
    (60,000 single-label images), as the papers pretrain on ImageNet before NUS-WIDE.

    A mosaic protocol trains on 5,000 mosaics, too few to pretrain a trunk on: 195 steps left the (tile, class)
    classifier at the labels' prior loss, and its summed 40-label cross-entropy diverged at the stage's lr. A
    trunk pretrained on the full-frame Fashion-MNIST images sees items at twice the scale and always centred:
    a DATH-N cell hashed the pair mosaics from it into 12 distinct codes per 1,000 images (mAP 0.452 against
    0.344 random); from a ``mosaic-single`` trunk, 280 distinct codes and mAP 0.699 (AMD EPYC, stop 29)."""
    return 'mosaic-single' if data in MOSAIC_DATA else data


def pretrain_trunks(models: Sequence[str], data: str, budget: Budget, work: Path, seed: int, resume: bool,
                    device: str = 'auto', say: Callable[[str], None] = print) -> Dict[str, Dict[str, Any]]:
    """The budget's pretraining stage for every trunk ``models`` start from; ``{arch: record}``.

    A record (``WORK/pretrain.jsonl``, a :class:`~deephash_zoo.experiments.stages.StageLog`) holds the trunk
    file, its CPU and wall seconds summed over the pieces it ran in, steps and the last epoch's loss and
    accuracy. Its resumable state is deleted once the trunk is written (hundreds of MB)."""
    log_path = work / 'pretrain.jsonl'
    if not resume:
        log_path.unlink(missing_ok=True)
    log = StageLog(log_path, say)
    if not resume:
        shutil.rmtree(log.timers, ignore_errors=True)
    data = pretraining_data(data)
    settings = dict(epochs=budget.pretrain_epochs, data=data, img_size=budget.img_size,
                    subset=budget.train_subset, batch_size=budget.batch_size, seed=seed)
    records = {}
    for arch in dict.fromkeys(trunk_of(m) for m in models):
        folder = work / f'pretrain-{arch}'
        if not resume:
            shutil.rmtree(folder / 'last', ignore_errors=True)

        def pretrain(arch: str = arch, folder: Path = folder) -> Dict[str, Any]:
            again = (folder / 'last' / 'state.json').is_file()
            summary = train(TrainConfig(
                model=arch, stage='pretrain', data=data, out=str(folder), epochs=budget.pretrain_epochs,
                batch_size=budget.batch_size, img_size=budget.img_size, subset=budget.train_subset, seed=seed,
                log_every=10_000, device=device, resume=again, overwrite=not again))
            last = epoch_records(folder)[-1]
            return dict(arch=arch, trunk=str(folder / TRUNK_FILE), epochs=budget.pretrain_epochs,
                        steps=summary['step'], loss=float(last['loss']), accuracy=last.get('accuracy'))

        records[arch] = log.run(f'pretrain:{arch}', folder / TRUNK_FILE, pretrain, settings=settings)
        shutil.rmtree(folder / 'last', ignore_errors=True)
    return records


def _stage_trunks(models: Sequence[str], work: Path) -> Dict[str, str]:
    """``{arch: trunk file}`` the pretraining stage writes for ``models``, known before it runs."""
    return {arch: str(work / f'pretrain-{arch}' / TRUNK_FILE) for arch in dict.fromkeys(trunk_of(m) for m in models)}


def _settings_of(models: Sequence[str], data: str, budget: Budget, starts: Dict[str, Optional[str]],
                 digests: Dict[str, str]) -> Dict[str, Dict[str, Any]]:
    """Each model's :func:`cell_settings`, from its starting weights and their (already computed) digest."""
    return {m: cell_settings(m, data, budget, starts[m], digests.get(starts[m]) if starts[m] else None)
            for m in models}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _arms_with_cells(arms: Sequence[Arm], have: Set[str]) -> List[Arm]:
    """``arms`` cut to the code lengths whose model has cells; an arm with none left out. A table grown in pieces
    (``only``: a column for some arms) shows an arm's missing lengths blank, not as zeros or errors."""
    out = []
    for arm in arms:
        models = {b: m for b, m in arm.models.items() if m in have}
        if models:
            out.append(Arm(arm.label, models, arm.description))
    return out


def run_experiment(
        experiment: str,
        data: str,
        budget: Budget,
        work: Path,
        bits: Sequence[int] = BITS,
        only: Sequence[str] = (),
        seeds: Optional[Sequence[int]] = None,
        resume: bool = False,
        keep: str = 'first-seed',
        init: Optional[str] = None,
        device: str = 'auto',
        measure_encoding: bool = True,
        command: str = '',
        say: Callable[[str], None] = print,
        cells_path: Optional[Path] = None,
) -> Dict[str, Any]:
    """Train and evaluate every cell of ``experiment`` on ``data``; returns the experiment's JSON dict.

    ``only``: the arms to train now; the table still holds every arm whose cells the cells file has (with
    ``resume``), at the lengths they ran, so a column can be added for some arms without retraining the others.

    ``cells_path``: where finished cells are appended (default ``WORK/cells.jsonl``); a file kept elsewhere, e.g.
    under version control, carries a long experiment across machines and sessions."""
    if keep not in KEEP_CHOICES:
        raise ValueError(f'keep must be one of {KEEP_CHOICES}, got {keep!r}')
    table_arms = arms_for(experiment, tuple(bits))
    trained_arms = arms_for(experiment, tuple(bits), tuple(only))
    seeds = tuple(budget.seeds if seeds is None else seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds must be distinct and at least one, got {list(seeds)}')
    dev = checked_device(device)
    cells_path = cells_path or work / 'cells.jsonl'
    done = _cells_to_keep(cells_path, resume, experiment, data, budget, say)
    loaded = set(done)
    models = list(dict.fromkeys(m for arm in trained_arms for m in arm.distinct_models))
    # every model of the table whose starting weights this run has: the cells file's cells of arms not trained
    # now (``only``) join the table when they were trained with the same settings from the same trunk
    trunks = _stage_trunks(models, work) if budget.pretrain_epochs and init is None else {}
    table_models = [m for arm in table_arms for m in arm.distinct_models if not trunks or trunk_of(m) in trunks]
    digests = {init: init_digest(init)} if init else {}
    if resume:  # before the pretraining stage, which takes long; its trunk's digest is checked once it is there
        planned = {m: trunks.get(trunk_of(m), init) for m in table_models}
        pending = dict(digests, **{path: 'not pretrained yet' for path in trunks.values()})
        _check_resumed(done, _settings_of(table_models, data, budget, planned, pending), cells_path,
                       unknown=('init_tensors_sha256',) if trunks else ())
    work.mkdir(parents=True, exist_ok=True)
    cells_path.parent.mkdir(parents=True, exist_ok=True)
    machine_start = machine_info()
    t0 = time.perf_counter()
    # first, so that query and database subsets the data cannot give stop the run before anything trains
    say('chance level (random codes)')
    chance = chance_level(data, budget, budget.eval_seed_for(seeds[0]))
    pretrained: Dict[str, Dict[str, Any]] = {}
    if trunks:
        pretrained = pretrain_trunks(models, data, budget, work, seeds[0], resume, device, say)
    starts = {m: pretrained[trunk_of(m)]['trunk'] if pretrained else init for m in table_models}
    digests.update({path: init_digest(path) for path in set(starts.values()) if path and path not in digests})
    expected = _settings_of(table_models, data, budget, starts, digests)
    if resume:
        _check_resumed(done, expected, cells_path)
    total = len(models) * len(seeds)
    finished = 0
    for seed in seeds:
        for model in models:
            if (model, seed) in done:
                finished += 1
                continue
            keep_this = keep == 'all' or (keep == 'first-seed' and seed == seeds[0])
            t_cell = time.perf_counter()
            row = run_cell(model, data, budget, seed, work / f'{model}-seed{seed}', keep=keep_this,
                           init=starts[model], device=device, settings=expected[model])
            row.update(machine=run_machine(dev), finished=_utc_now())  # where and when: cells outlive a call
            with open(cells_path, 'a') as f:
                f.write(json.dumps(row) + '\n')
            done[(model, seed)] = row
            finished += 1
            best = max(r['map'] for r in row['results'].values())
            say(f'[{finished}/{total}] {model} seed {seed}: best mAP {best:.4f}, '
                f'{time.perf_counter() - t_cell:.0f} s (elapsed {time.perf_counter() - t0:.0f} s)')
    train_wall = time.perf_counter() - t0
    arms = _arms_with_cells(table_arms, {m for (m, s) in done if s in seeds and m in expected})
    shown = list(dict.fromkeys(m for arm in arms for m in arm.distinct_models))
    table_cells = [(m, s) for s in seeds for m in shown if (m, s) in done]
    encoding = _encoding(experiment, arms, say) if measure_encoding else {}
    return dict(
        schema_version=SCHEMA_VERSION, experiment=experiment, data=data, budget=asdict(budget),
        seeds=list(seeds), bits=list(bits),
        arms=[dict(label=a.label, description=a.description, models={str(b): m for b, m in a.models.items()})
              for a in arms],
        params={m: _num_params(m) for m in shown},
        cells=[done[key] for key in table_cells],
        encoding=dict(img_size=ENCODE_IMG_SIZE, batch=1, runtime='PyTorch eager', models=encoding),
        chance=chance, init=init, pretrain=pretrained,
        wall_seconds=time.perf_counter() - t0, train_wall_seconds=train_wall,
        machine=dict(machine_start, load_average_end=load_average()),
        generated=_utc_now(),
        command=command, resumed_cells=sum(key in loaded for key in table_cells),
    )
