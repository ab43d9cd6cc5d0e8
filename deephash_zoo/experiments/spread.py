"""How far a cell's mAP moves with its training seed, and how far with the draw of its evaluation subsets.

``python -m deephash_zoo.experiments.spread --model dmlh_cnnf_32 --data fashion-mnist --init TRUNK`` trains the
model once per training seed (a cell of the budget, through :func:`~.runs.run_cell`) and scores every
checkpoint on the query and database subsets of every evaluation seed. It prints the train x eval table and
three spreads: over training seeds with the subsets held fixed (what a budget with ``eval_seed`` measures), over
evaluation seeds with the training held fixed, and along the diagonal, where each training seed is scored on its
own draw (a budget without ``eval_seed``). A command, not a test; it writes a JSON record naming the machine.

A checkpoint already in ``WORK/MODEL-seedS`` is scored again rather than retrained when its ``cell.json`` records
the settings this run would train with.
"""
import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from deephash_zoo.utils import cpu_model, provenance, read_json, usable_cores, write_atomic

from .budgets import BUDGETS, Budget, get_budget
from .run import init_digest
from .runs import cell_settings, run_cell, score_checkpoint

__all__ = ['measure_spread', 'summarize_spread']


def _trained(model: str, data: str, budget: Budget, seed: int, run_dir: Path, init: Optional[str],
             settings: Dict[str, Any]) -> None:
    """Train the cell into ``run_dir`` unless a checkpoint trained with ``settings`` and ``seed`` is there."""
    record = run_dir / 'cell.json'
    if (run_dir / 'checkpoint').is_dir() and record.is_file():
        had = read_json(record, 'the cell record')
        if had.get('settings') == settings and had.get('seed') == seed:
            return
    row = run_cell(model, data, budget, seed, run_dir, keep=True, init=init, settings=settings)
    write_atomic(record, (json.dumps(dict(seed=seed, settings=settings, weights_sha256=row['weights_sha256']),
                                     indent=2) + '\n').encode())


def summarize_spread(table: Dict[int, Dict[int, float]]) -> Dict[str, Any]:
    """Standard deviations of a {train seed: {eval seed: mAP}} table: over training seeds per fixed evaluation
    seed, over evaluation seeds per fixed training seed (each with their mean), and along the diagonal."""
    train_seeds = sorted(table)
    eval_seeds = sorted({e for row in table.values() for e in row})
    over_train = {e: statistics.stdev(table[t][e] for t in train_seeds) for e in eval_seeds}
    over_eval = {t: statistics.stdev(table[t][e] for e in eval_seeds) for t in train_seeds}
    diagonal = [table[s][s] for s in train_seeds if s in table[s]]
    return dict(std_over_training_seeds=over_train, mean_std_over_training_seeds=statistics.fmean(over_train.values()),
                std_over_eval_seeds=over_eval, mean_std_over_eval_seeds=statistics.fmean(over_eval.values()),
                std_own_draw=statistics.stdev(diagonal) if len(diagonal) > 1 else None)


def measure_spread(model: str, data: str, budget: Budget, seeds: Sequence[int], work: Path,
                   init: Optional[str] = None, say=print) -> Dict[str, Any]:
    """Train ``model`` with each seed and score it on each seed's subsets; the JSON record (see the module)."""
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f'need two or more distinct seeds, got {list(seeds)}')
    digest = init_digest(init) if init else None  # one line, not safetensors' traceback, for a truncated file
    settings = cell_settings(model, data, budget, init, digest)
    table: Dict[int, Dict[int, float]] = {}
    bits = None
    for seed in seeds:
        run_dir = work / f'{model}-seed{seed}'
        say(f'training seed {seed}: {run_dir}')
        _trained(model, data, budget, seed, run_dir, init, settings)
        for eval_seed in seeds:
            report = score_checkpoint(run_dir, data, budget, eval_seed)
            bits = bits or sorted(report['results'], key=int)[0]
            table.setdefault(seed, {})[eval_seed] = report['results'][bits]['map']
            say(f'  scored on seed {eval_seed}\'s subsets: mAP {table[seed][eval_seed]:.4f}')
    return dict(model=model, data=data, budget=budget.name, bits=int(bits), seeds=list(seeds),
                query_subset=budget.query_subset, db_subset=budget.db_subset,
                init=init, init_tensors_sha256=digest,
                map={str(t): {str(e): v for e, v in row.items()} for t, row in table.items()},
                **{k: ({str(s): v for s, v in x.items()} if isinstance(x, dict) else x)
                   for k, x in summarize_spread(table).items()},
                machine=dict(cpu=cpu_model(), usable_cores=usable_cores()))


def render(record: Dict[str, Any]) -> str:
    seeds = record['seeds']
    lines = [f"{record['model']} on {record['data']} ({record['budget']} budget, {record['bits']} bits, "
             f"{record['query_subset']} queries x {record['db_subset']} database items), {record['machine']['cpu']}",
             'mAP@all: rows = training seed, columns = the seed of the evaluation subsets',
             '| train \\ eval | ' + ' | '.join(str(s) for s in seeds) + ' | std over eval seeds |',
             '|---' * (len(seeds) + 2) + '|']
    for t in seeds:
        lines.append(f'| {t} | ' + ' | '.join(f"{record['map'][str(t)][str(e)]:.4f}" for e in seeds)
                     + f" | {record['std_over_eval_seeds'][str(t)]:.4f} |")
    lines.append('| std over training seeds | ' + ' | '.join(
        f"{record['std_over_training_seeds'][str(e)]:.4f}" for e in seeds) + ' | |')
    lines += ['', f"mean std over training seeds, subsets fixed: {record['mean_std_over_training_seeds']:.4f}",
              f"mean std over evaluation draws, training fixed: {record['mean_std_over_eval_seeds']:.4f}",
              f"std when each training seed is scored on its own draw (the diagonal): {record['std_own_draw']:.4f}"]
    return '\n'.join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m deephash_zoo.experiments.spread', description=__doc__.split('\n\n')[0])
    p.add_argument('--model', required=True, help='a registered single-code model, e.g. dmlh_cnnf_32')
    p.add_argument('--data', default='fashion-mnist')
    p.add_argument('--budget', choices=sorted(BUDGETS), default='cpu-pretrained')
    p.add_argument('--init', default=None, help='trunk file every training seed starts from (the budget\'s stage '
                                                'trunk, e.g. WORK/pretrain-cnnf/trunk.safetensors of an experiment)')
    p.add_argument('--seeds', default='0,1,2', help='training seeds, also the evaluation seeds (default: 0,1,2)')
    p.add_argument('--work', type=Path, default=Path('runs/spread'))
    p.add_argument('--out', type=Path, default=None, help='JSON record (default: WORK/spread-MODEL.json)')
    return p


def _run(argv: Optional[List[str]]) -> int:
    args = _parser().parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(',')]
    except ValueError:
        raise ValueError(f'--seeds: expected comma-separated integers, got {args.seeds!r}') from None
    if args.init and not Path(args.init).is_file():
        raise ValueError(f'--init {args.init}: no such file')
    record = measure_spread(args.model, args.data, get_budget(args.budget), seeds, args.work, args.init)
    record.update(provenance('deephash_zoo.experiments.spread', argv))
    out = args.out or args.work / f'spread-{args.model}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(record, indent=2) + '\n').encode())
    print(render(record))
    print(f'wrote {out}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The command, its expected failures (unknown model, unreadable --init, bad seeds) as one line with exit
    status 2, as the deephash-* commands give them (this module may not import ``cli``, which is above it)."""
    try:
        return _run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except RuntimeError as e:
        if 'Unknown model' not in str(e):  # timm's message for a name nobody registered
            raise
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
