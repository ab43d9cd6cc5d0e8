"""``deephash-push``: publish a checkpoint folder to the Hugging Face Hub (config.json, model.safetensors and a
README.md card rendered from the config and metrics), or with --dry-run build and list the upload only."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ._common import run_main


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
    p.add_argument('--checkpoint', required=True, help='checkpoint folder, or a run folder holding checkpoint/')
    p.add_argument('--repo-id', required=True, help='ORG/NAME, e.g. deephash-zoo/dath_alexnet_32.fmnist')
    p.add_argument('--private', action='store_true', help='create the repository private (an existing one keeps '
                                                          'its visibility)')
    p.add_argument('--dry-run', action='store_true', help='build the upload folder and list it; touch nothing remote')
    p.add_argument('--metrics', type=Path, default=None, help="deephash-eval's metrics.json for the card")
    p.add_argument('--efficiency', type=Path, default=None,
                   help='efficiency JSON for the card (export/efficiency.json)')
    p.add_argument('--out', type=Path, default=None, help='keep the upload folder here (default: a temporary one)')
    p.add_argument('--message', default=None, help='commit message')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.hub.push import push_checkpoint

    args = _parser().parse_args(argv)
    plan = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, metrics=args.metrics,
                           efficiency=args.efficiency, dry_run=args.dry_run, out_dir=args.out,
                           commit_message=args.message)
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
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
