"""``deephash-eval``: Hamming-ranking retrieval metrics of a checkpoint on a benchmark's query/database split.

Loads the checkpoint (a folder, a run folder, ``local-dir:FOLDER`` or ``hf-hub:ORG/NAME``), rebuilds the
data protocol it was trained under (same data, same seed by default), encodes the query and database sets
once (every code length of a multi-length model from the same pass), prints mAP@K and P@N per code length,
and writes ``metrics.json``, ``pr_curve.png``, ``p_at_n.png`` and ``retrieval_grid.png`` to ``--out``
(default: ``RUN/eval/`` for a training run folder ``RUN`` holding ``checkpoint/``, else
``CHECKPOINT/eval/``; ``runs/hf-hub/ORG--NAME/eval/`` for a Hub name), each file atomically. The work
and the ``metrics.json`` schema live in :mod:`deephash_zoo.evaluation.report`; this module parses flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from deephash_zoo.evaluation.plots import GRID_ROWS
from deephash_zoo.evaluation.report import (
    BENCHMARK_TOPK,
    EvalOptions,
    default_out,
    format_table,
    run_evaluation,
    write_evaluation,
)

from ._common import UserError, run_main

__all__ = ['main', 'cli', 'options_from_args']


def _topk_arg(text: str) -> Optional[int]:
    if text == 'all':
        return None
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {text!r}")
    return k


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-eval', description=(__doc__ or '').split('\n', 1)[0],
                                epilog='metrics.json schema: see `python -m pydoc deephash_zoo.evaluation.report`.')
    p.add_argument('--checkpoint', required=True,
                   help='checkpoint folder, a run folder holding checkpoint/, local-dir:FOLDER or hf-hub:ORG/NAME')
    p.add_argument('--data', default=None,
                   help="fashion-mnist | mosaic[-pair|-quadrant|-single] | cifar10[-1|-2]:DIR | list:PATH | coco:PATH "
                        "| folder:DIR (your own images, one subfolder per class; split by the 'own' protocol) "
                        "(default: the checkpoint's dataset)")
    p.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    p.add_argument('--bits', type=int, default=None, help='evaluate only this code length (default: all)')
    p.add_argument('--topk', '-k', type=_topk_arg, default=argparse.SUPPRESS,
                   help="K of mAP@K, or 'all' (default: the benchmark's, e.g. 5000 for NUS-WIDE/COCO, all otherwise)")
    p.add_argument('--query-subset', type=int, default=None, help='evaluate a seeded subset of this many queries')
    p.add_argument('--db-subset', type=int, default=None, help='rank a seeded subset of this many database items')
    p.add_argument('--img-size', type=int, default=None, help="input size (default: the checkpoint's training size)")
    p.add_argument('--out', type=Path, default=None,
                   help='output folder (default: RUN/eval, CHECKPOINT/eval, or runs/hf-hub/ORG--NAME/eval)')
    p.add_argument('--json', action='store_true', help='print metrics.json on stdout instead of the table')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--seed', type=int, default=None, help="protocol seed (default: the checkpoint's training seed)")
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--no-plots', action='store_true', help='write metrics.json only (no matplotlib needed)')
    p.add_argument('--grid-rows', type=int, default=GRID_ROWS,
                   help='queries in retrieval_grid.png (default: %(default)s; 0: no grid)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def options_from_args(args: argparse.Namespace) -> EvalOptions:
    """The library's options from deephash-eval's flags."""
    return EvalOptions(checkpoint=args.checkpoint, data=args.data, data_root=args.data_root, bits=args.bits,
                       topk=getattr(args, 'topk', BENCHMARK_TOPK), query_subset=args.query_subset,
                       db_subset=args.db_subset, img_size=args.img_size, batch_size=args.batch_size, seed=args.seed,
                       device=args.device, plots=not args.no_plots, progress=not args.no_progress)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.grid_rows < 0:
        raise UserError(f'--grid-rows must be 0 or more, got {args.grid_rows}')
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f'--out {args.out}: is a file; give a folder for metrics.json and the plots')
    ev = run_evaluation(options_from_args(args))
    out = args.out or default_out(ev.report['checkpoint'])
    written = write_evaluation(ev, out, plots=not args.no_plots, grid_rows=args.grid_rows)
    if args.json:
        import json

        print(json.dumps(ev.report, indent=2))
        print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)
    else:
        print(format_table(ev.report))
        print(f"wrote {', '.join(written)} to {out}")
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
