"""``deephash-card``: render a checkpoint's Hugging Face model card from its config.json, deephash-eval's
metrics.json and (optionally) the efficiency table."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from ._common import run_main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-card', description=__doc__)
    p.add_argument('--checkpoint', required=True, help='checkpoint folder, or a run folder holding checkpoint/')
    p.add_argument('--metrics', type=Path, default=None, help="deephash-eval's metrics.json (omit: no results yet)")
    p.add_argument('--efficiency', type=Path, default=None,
                   help='efficiency JSON (export/efficiency.json); missing or without this model: "Not measured"')
    p.add_argument('--repo-id', default=None, help="the card's Hub repository (default: the model's hf_hub_id)")
    p.add_argument('--template', type=Path, default=None,
                   help="card template (default: the package's card_template.md)")
    p.add_argument('--out', required=True, type=Path, help='output markdown file, e.g. hub_cards/<repo>.md')
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from deephash_zoo.hub.card import render_card, write_card

    args = _parser().parse_args(argv)
    if args.repo_id is not None:
        from deephash_zoo.hub.push import check_repo_id

        check_repo_id(args.repo_id)
    card = render_card(args.checkpoint, metrics=args.metrics, efficiency=args.efficiency, repo_id=args.repo_id,
                       template=args.template)
    write_card(card, args.out)
    results = card.data.eval_results or []
    print(f'wrote {args.out}: {len(results)} mAP result(s)' + (
        '' if args.efficiency is None or args.efficiency.is_file()
        else f'; {args.efficiency} does not exist, efficiency "Not measured"'))
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
