"""``deephash-experiment``: rerun one of the papers' tables (DATH ablation, ADMTH multi-task study) on
this machine, with fixed seeds, and write its JSON and markdown tables.

Without ``--publish`` everything goes under ``--work`` (default ``runs/experiments/KEY``). With it the
JSON and markdown go to ``hub_cards/results/``, the tables into README.md between the experiment's
markers, and a model card per kept checkpoint (first seed) into ``hub_cards/``: the repository's
results are this command's output, never typed.
"""
import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from deephash_zoo.training.allocator import keep_freed_memory

from ._common import UserError, run_main

__all__ = ['main', 'cli']

_CARDS = Path('hub_cards')


def _ints(text: str) -> List[int]:
    """Distinct non-negative integers, comma-separated (an empty item is ignored, an empty list refused)."""
    try:
        values = [int(t) for t in text.split(',') if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None
    if not values:
        raise argparse.ArgumentTypeError('expected at least one integer, got none')
    if any(v < 0 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f'expected distinct non-negative integers, got {text!r}')
    return values


def _labels(text: str) -> Tuple[str, ...]:
    """Arm labels, comma-separated (empty items ignored, as --bits and --seeds do; none at all refused)."""
    labels = tuple(dict.fromkeys(t.strip() for t in text.split(',') if t.strip()))
    if not labels:
        raise argparse.ArgumentTypeError(f'expected comma-separated arm labels, got {text!r}')
    return labels


# what --render-only cannot honour: it trains nothing and re-renders the JSON as it was written
_TRAINING_FLAGS = ('bits', 'arms', 'seeds', 'resume', 'init', 'cells')


def _parser() -> argparse.ArgumentParser:
    from deephash_zoo.experiments import BUDGETS, EXPERIMENTS, KEEP_CHOICES

    p = argparse.ArgumentParser(prog='deephash-experiment', description=(__doc__ or '').split('\n\n')[0])
    p.add_argument('experiment', choices=sorted(EXPERIMENTS), help='ablation: DATH and its variants; '
                   'multitask: ADMTH multi-length vs DMLH vs four single-length ADMTH')
    p.add_argument('--data', choices=('fashion-mnist', 'mosaic', 'mosaic-quadrant', 'mosaic-pair'), default=None,
                   help='dataset (default: fashion-mnist for ablation, mosaic for multitask)')
    p.add_argument('--budget', choices=sorted(BUDGETS), default='cpu-small',
                   help='cpu-pretrained: the zoo\'s recipe (a pretrained trunk, then 300 hashing steps a cell), '
                        'about 3 h on 2 CPU cores at 32 and 64 bits; cpu-pretrained-long: the same with 936 steps a '
                        'cell (3.1x the cost: run only the arms a claim needs); cpu-small: < 30 min from scratch (its '
                        'runs learn little); paper: the papers\' settings (GPU); tiny, tiny-pretrained: tests')
    p.add_argument('--seeds', type=_ints, default=None, help="comma-separated seeds (default: the budget's)")
    p.add_argument('--bits', type=_ints, default=None,
                   help="code lengths (default: the budget's: 32,64 for the cpu-pretrained ones, else 16,32,48,64)")
    p.add_argument('--arms', type=_labels, default=None,
                   help='comma-separated arm labels to run, e.g. DATH,DATH-N (default: all)')
    p.add_argument('--work', type=Path, default=None,
                   help='run folders and cells.jsonl (default: runs/experiments/KEY)')
    p.add_argument('--cells', type=Path, default=None,
                   help='file the finished cells are appended to (default: WORK/cells.jsonl); keep it under version '
                        'control to finish a long experiment in pieces on other machines of the same kind')
    p.add_argument('--resume', action='store_true',
                   help='keep the cells already in the cells file (refused where a cell was trained with other '
                        'settings or from another trunk); without it, a cells file that holds cells is refused')
    p.add_argument('--keep', choices=KEEP_CHOICES, default='first-seed',
                   help='checkpoints to keep for cards and deephash-push (default: %(default)s)')
    p.add_argument('--init', default=None,
                   help='initial weights: safetensors in the model layout (e.g. converted ImageNet weights) or a '
                        'trunk file of deephash-pretrain; with cpu-pretrained it replaces the pretraining stage')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--no-encoding-time', action='store_true', help='skip the eager encoding-time measurement')
    p.add_argument('--publish', action='store_true', help='write hub_cards/results/, the README block and the cards')
    p.add_argument('--render-only', action='store_true',
                   help="train nothing: re-render the tables (and with --publish the README block and cards) from "
                        "the experiment's JSON already written")
    p.add_argument('--readme', type=Path, default=Path('README.md'), help='README to fill with --publish')
    p.add_argument('--cards', type=Path, default=_CARDS, help='card folder with --publish (default: hub_cards)')
    p.add_argument('--efficiency', type=Path, default=Path('export/efficiency.json'),
                   help="efficiency JSON for the cards' speed table (missing: \"Not measured\")")
    return p


def _read_result(path: Path) -> dict:
    from deephash_zoo.utils import read_json

    result = read_json(path, 'no results to render; run the experiment first')
    if not isinstance(result, dict) or result.get('schema_version') != 1 or 'cells' not in result:
        raise UserError(f'{path}: not a deephash-experiment result (schema_version 1 with cells)')
    return result


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.experiments import experiment_key, get_budget, render_markdown, run_experiment
    from deephash_zoo.experiments.plan import BITS, default_data
    from deephash_zoo.experiments.publish import check_readme, update_readme, write_cards, write_outputs

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.render_only:
        given = [f"--{f}" for f in _TRAINING_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            raise UserError(f"--render-only trains nothing and re-renders the JSON as written: drop {', '.join(given)}")
    data = args.data or default_data(args.experiment)[0]
    budget = get_budget(args.budget)
    key = experiment_key(args.experiment, data, budget.name)
    work = args.work or Path('runs/experiments') / key
    out = args.cards / 'results' if args.publish else work
    if args.publish:
        if budget.name.startswith('tiny'):
            raise UserError(f'the {budget.name} budget is for tests (its numbers mean nothing); do not --publish it')
        check_readme(args.readme, key)  # before hours of training, not after
    arms = args.arms or ()
    command = 'deephash-experiment ' + ' '.join(shlex.quote(a) for a in argv)
    if args.render_only:
        result = _read_result(out / f'{key}.json')
    else:
        bits = tuple(args.bits or budget.default_bits or BITS)
        result = run_experiment(args.experiment, data, budget, work, bits=bits, only=arms,
                                seeds=args.seeds, resume=args.resume, keep=args.keep, init=args.init,
                                device=args.device, measure_encoding=not args.no_encoding_time, command=command,
                                cells_path=args.cells)
    json_rel = f'{out.as_posix()}/{key}.json'
    markdown = render_markdown(result, json_path=json_rel)
    paths = write_outputs(result, markdown, out, key)
    print(markdown)
    print(f"wrote {paths['json']} and {paths['markdown']}")
    if args.publish:
        update_readme(args.readme, key, markdown.replace('### ', '#### ', 1))
        cards = write_cards(result, args.cards, efficiency=args.efficiency)
        print(f'updated {args.readme} ({key}); wrote {len(cards)} card(s) to {args.cards}')
    return 0


def cli() -> None:
    keep_freed_memory()  # this process trains: it reuses freed fc6-sized blocks (see the module)
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
