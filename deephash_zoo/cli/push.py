"""``deephash-push``: publish a checkpoint folder to the Hugging Face Hub (config.json, model.safetensors and a
README.md card rendered from the config and metrics), or every evaluated model of a zoo build (``--zoo WORK``:
each to ORG/MODEL.TAG with its metrics), or with --dry-run build and list the upload only."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from deephash_zoo.models.contract import HUB_ORG

from ._common import UserError, run_main


def _size(n: int) -> str:
    """Decimal units, as the Hub shows file sizes."""
    if n < 1000:
        return f'{n} B'
    for unit, scale in (('kB', 1e3), ('MB', 1e6), ('GB', 1e9)):
        if n < scale * 1000 or unit == 'GB':
            return f'{n / scale:.1f} {unit}'
    return f'{n} B'


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-push', description=__doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument('--checkpoint', help='checkpoint folder, or a run folder holding checkpoint/')
    what.add_argument('--zoo', type=Path, help='a deephash-zoo build folder (runs/zoo-fmnist): push every model '
                                               'evaluated there, each with its eval/metrics.json')
    p.add_argument('--repo-id', help='ORG/NAME, e.g. deephash-zoo/dath_alexnet_32.fmnist (with --checkpoint)')
    p.add_argument('--org', default=HUB_ORG, help='with --zoo: the organisation (default: %(default)s)')
    p.add_argument('--revision', default=None, help='branch to commit to (created when missing; default main)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.add_argument('--private', action='store_true', help='create the repository private (an existing one keeps '
                                                          'its visibility)')
    p.add_argument('--dry-run', action='store_true', help='build the upload folder and list it; touch nothing remote')
    p.add_argument('--metrics', type=Path, default=None,
                   help="deephash-eval's metrics.json for the card (default: the one deephash-eval wrote for the "
                        'checkpoint, RUN/eval/metrics.json)')
    p.add_argument('--efficiency', type=Path, default=None,
                   help='efficiency JSON for the card (export/efficiency.json)')
    p.add_argument('--out', type=Path, default=None, help='keep the upload folder here (default: a temporary one)')
    p.add_argument('--message', default=None, help='commit message')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.hub.push import push_checkpoint, zoo_uploads

    args = _parser().parse_args(argv)
    if args.zoo is not None:
        if args.repo_id or args.metrics or args.out:
            raise UserError('--zoo names each repository and metrics file itself; drop --repo-id, --metrics, --out')
        uploads = zoo_uploads(args.zoo, args.org)
        print(f'{len(uploads)} models of {args.zoo} to push' + (' (dry run)' if args.dry_run else ''))
        for checkpoint, repo_id, metrics in uploads:
            _report(args, push_checkpoint(checkpoint, repo_id, private=args.private, metrics=metrics,
                                          efficiency=args.efficiency, dry_run=args.dry_run,
                                          commit_message=args.message, revision=args.revision,
                                          create_pr=args.create_pr))
        return 0
    if not args.repo_id:
        raise UserError('--checkpoint needs --repo-id ORG/NAME')
    metrics, note = (args.metrics, None) if args.metrics is not None else _evaluation_of(args.checkpoint)
    plan = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, metrics=metrics,
                           efficiency=args.efficiency, dry_run=args.dry_run, out_dir=args.out,
                           commit_message=args.message, revision=args.revision, create_pr=args.create_pr)
    _report(args, plan)
    if note:
        print(note, file=sys.stderr if metrics is None else sys.stdout)
    return 0


def _evaluation_of(checkpoint: str) -> Tuple[Optional[Path], Optional[str]]:
    """The metrics.json deephash-eval writes for ``checkpoint`` by default (``RUN/eval`` for a run or its
    checkpoint/), or None with a warning that the card will have no results. A checkpoint that does not resolve is
    left to push_checkpoint to refuse (its token check comes first)."""
    from deephash_zoo.evaluation.report import default_out
    from deephash_zoo.hub.folder import hub_checkpoint_name, resolve_checkpoint_dir

    try:
        where = checkpoint if hub_checkpoint_name(checkpoint) else resolve_checkpoint_dir(checkpoint)
    except FileNotFoundError:
        return None, None
    path = default_out(where) / 'metrics.json'
    if path.is_file():
        return path, f'card results from {path}'
    return None, (f'warning: {path} does not exist: the card has no results (run deephash-eval --checkpoint '
                  f'{checkpoint}, or pass --metrics)')


def _report(args: argparse.Namespace, plan) -> None:
    visibility = 'private' if plan.private else 'public'
    head = 'would upload' if args.dry_run else 'uploaded'
    print(f'{head} to {plan.url} ({visibility} if created):')
    width = max(len(name) for name, _ in plan.files)
    for name, size in plan.files:
        print(f'  {name:<{width}}  {_size(size):>9}')
    print(f'  {"total":<{width}}  {_size(plan.total_bytes):>9}')
    if plan.scrubbed:
        print(f'local paths shortened to their last component in config.json: {", ".join(plan.scrubbed)}')
    print(f'upload folder: {plan.folder}' if plan.kept else 'upload folder was temporary (removed); keep it with --out')
    if plan.commit_url:
        print(f'commit: {plan.commit_url}')


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
