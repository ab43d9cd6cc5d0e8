"""``deephash-zoo``: build the zoo's checkpoints on this machine: pretrain each trunk, train each headline
model with the ``scratch`` recipe, evaluate it on the full protocol, and (``--publish``) write the table into
``hub_cards/results/`` and README.md and each model's card into ``hub_cards/``.

Resumable stage by stage: run the same command again after an interruption. Each stage prints its CPU and
wall time as it finishes. ``deephash-zoo note --stage NAME --text TEXT`` adds a note to a finished stage's
record (how it ran); the table lists the notes under it.
"""
import argparse
import shlex
import sys
from pathlib import Path
from typing import List, Optional

from deephash_zoo.training.allocator import keep_freed_memory

from ._common import UserError, run_main

__all__ = ['main', 'cli']


def _parser() -> argparse.ArgumentParser:
    from deephash_zoo.experiments.zoo import HEADLINE, PLANS

    p = argparse.ArgumentParser(prog='deephash-zoo', description=(__doc__ or '').split('\n\n')[0])
    p.add_argument('action', choices=('build', 'note'),
                   help='build: run the stages not done yet, then the table; note: add --text to the record of '
                        '--stage')
    p.add_argument('--plan', choices=sorted(PLANS), default='fmnist',
                   help='fmnist: the published build (default); tiny: tests only')
    p.add_argument('--models', default=None,
                   help=f"comma-separated models (default: the headline ones, {', '.join(HEADLINE)})")
    p.add_argument('--work', type=Path, default=None, help='stage folders and stages.jsonl (default: runs/zoo-PLAN)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--render-only', action='store_true', help='train nothing: the table from the stages done')
    p.add_argument('--publish', action='store_true', help='write hub_cards/results/, the README block and the cards')
    p.add_argument('--readme', type=Path, default=Path('README.md'), help='README to fill with --publish')
    p.add_argument('--cards', type=Path, default=Path('hub_cards'), help='card folder (default: hub_cards)')
    p.add_argument('--efficiency', type=Path, default=Path('export/efficiency.json'),
                   help="efficiency JSON for the cards' speed table")
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--stage', help='note: the finished stage, e.g. train:dath_alexnet_32')
    p.add_argument('--text', help='note: what to say about how it ran')
    return p


def _note(work: Path, stage: Optional[str], text: Optional[str]) -> int:
    from deephash_zoo.experiments.stages import StageLog

    if not stage or text is None:
        raise UserError('note needs --stage NAME and --text TEXT')
    path = work / 'stages.jsonl'
    if not path.is_file():
        raise UserError(f'{path}: no stage log; run deephash-zoo build first')
    try:
        rec = StageLog(path, print).note(stage, text)
    except ValueError as err:
        raise UserError(str(err)) from err
    print(f"{path}: {stage}: note is now: {rec['note']}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.experiments.publish import check_readme, update_readme, write_outputs
    from deephash_zoo.experiments.zoo import build_zoo, get_plan, render_zoo_markdown, zoo_result

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    plan = get_plan(args.plan)
    key = f'zoo-{plan.name}'
    work = args.work or Path('runs') / key
    if args.action == 'note':
        return _note(work, args.stage, args.text)
    models = tuple(m.strip() for m in args.models.split(',') if m.strip()) if args.models else plan.models
    if args.publish:
        if not plan.publishable:
            raise UserError(f'the {plan.name} plan is for tests (its numbers mean nothing); do not --publish it')
        check_readme(args.readme, key)  # before hours of training, not after
    out = args.cards / 'results' if args.publish else work
    earlier = None
    if args.publish and (out / f'{key}.json').is_file():  # rows of models this work folder has not built
        from deephash_zoo.utils import read_json

        earlier = read_json(out / f'{key}.json', 'the published zoo table')
    if not args.render_only:
        build_zoo(plan, work, models, device=args.device, progress=not args.no_progress)
    result = zoo_result(plan, work, models, earlier=earlier)
    if not result['models']:
        raise UserError(f'{work}: no evaluated model yet; run deephash-zoo build first')
    command = 'deephash-zoo ' + ' '.join(shlex.quote(a) for a in argv)
    markdown = render_zoo_markdown(result, f'{out.as_posix()}/{key}.json', command)
    paths = write_outputs(result, markdown, out, key)
    print(markdown)
    print(f"wrote {paths['json']} and {paths['markdown']}")
    if args.publish:
        from deephash_zoo.hub.card import render_card, write_card
        from deephash_zoo.models.published import tag_for_dataset

        update_readme(args.readme, key, markdown.replace('### ', '#### ', 1))
        tag = tag_for_dataset(plan.data)
        for row in result['models']:
            repo_id = f"deephash-zoo/{row['model']}.{tag}"
            card_path = args.cards / f"{row['model']}.{tag}.md"
            if row.get('carried_over'):
                print(f"kept {card_path} (its row is carried over from the "
                      f"published table: not built under this plan in {work})")
                continue
            metrics = Path(row['checkpoint']).parent / 'eval' / 'metrics.json'
            card = render_card(row['checkpoint'], metrics=metrics, efficiency=args.efficiency, repo_id=repo_id)
            print(f"wrote {write_card(card, card_path)}")
        print(f'updated {args.readme} ({key})')
    return 0


def cli() -> None:
    keep_freed_memory()  # this process trains: it reuses freed fc6-sized blocks (see the module)
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
