"""``deephash-eval``: Hamming-ranking retrieval metrics of a checkpoint on a benchmark's query/database split.

Loads the checkpoint, rebuilds the data protocol it was trained under (same data, same seed by default),
encodes the query and database sets once (every code length of a multi-length model from the same pass),
prints mAP@K and P@N per code length, and writes to ``--out`` (default: ``RUN/eval/`` for a training run
folder ``RUN`` holding ``checkpoint/``, else ``CHECKPOINT/eval/``), each file atomically:

* ``metrics.json``, read by the Hugging Face model cards; its schema (``schema_version`` 1) is stable::

    {
      "schema_version": 1,
      "model": "dath_n_16",                 # the checkpoint's timm architecture
      "checkpoint": "/abs/path/checkpoint", # the checkpoint folder evaluated
      "weights_sha256": "...",              # sha256 of its model.safetensors
      "dataset": "fashion-mnist",           # the --data name (fashion-mnist | mosaic | cifar10:DIR | list:PATH | ...)
      "protocol": {
        "data": "fashion-mnist", "seed": 0,  # build_retrieval_data(data, seed=seed) made the split
        "num_queries": 1000, "num_database": 60000,                 # what was evaluated
        "protocol_num_queries": 1000, "protocol_num_database": 60000,  # the full split
        "query_subset": null, "db_subset": null,  # --query-subset / --db-subset (seeded subsets of the split)
        "map_topk": "all",                   # K of mAP@K (int) or "all"
        "num_labels": 10, "multi_label": false
      },
      "img_size": 224,                       # input size the images were resized to
      "results": {"16": evaluate(...) dict, ...},  # one entry per code length, keys str(bits), ascending
      "tie_break": "database index (stable)",
      "package_version": "0.1.0"
    }

  Each ``results`` entry is :func:`deephash_zoo.retrieval.metrics.evaluate`'s dict (``map``, ``map_topk``,
  ``p_at_n`` / ``r_at_n`` keyed by str(N) for N in :data:`EVAL_NS`, ``precision_radius2``,
  ``recall_radius2``, ``pr_curve``, ``bits``, ``num_queries``, ``num_database``, ``tie_break``) with two
  more keys: ``map_at_1000`` (mAP@1000, absent when K is 1000), ``map_tie_aware`` (mAP@all averaged over
  every order of tied items) and ``random_codes`` (``map``,
  ``map_at_1000``, ``p_at_100`` (kept for older readers), ``p_at_n`` at every N, ``precision_radius2`` of seeded
  random codes on the same query and database labels, and their ``seed``: the level each number is read
  against) and ``distinct_codes`` (``num_items``, ``num_distinct``, ``fraction`` among
  the first 1,000 queries). N above the database size counts the whole database.
* ``pr_curve.png`` (precision vs recall over Hamming radius 0..bits) and ``p_at_n.png`` (P@N vs N), one
  line per code length.
* ``retrieval_grid.png``: ``--grid-rows`` queries (default 6, picked by the protocol seed and spread over the
  labels, :func:`deephash_zoo.retrieval.grid.pick_queries`), each followed by its top 10 database items at the
  longest code length evaluated, with distances, relevant ones framed green and irrelevant ones red.

Subsets (``--query-subset`` / ``--db-subset``) are drawn from the full protocol split with
``numpy.random.default_rng([seed, 1])`` (queries) and ``[seed, 2]`` (database), so a subset never mixes
in items from another part of the split.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import deephash_zoo
from deephash_zoo.hub.checkpoint import (
    load_checkpoint,
    read_checkpoint_config,
    resolve_checkpoint_dir,
    run_folder,
    weights_sha256,
)
from deephash_zoo.utils import write_atomic

from ._common import UserError, run_main

__all__ = ['EVAL_NS', 'SCHEMA_VERSION', 'Evaluation', 'LoadedCheckpoint', 'load_for_retrieval', 'protocol_sets',
           'run_evaluation', 'main', 'cli']

SCHEMA_VERSION = 1
EVAL_NS: Tuple[int, ...] = (10, 50, 100, 200, 500, 1000, 2000, 5000)  # P@N / R@N points (DEFAULT_NS and more)
TABLE_NS: Tuple[int, ...] = (100, 500, 1000)
MAP_AT = 1000  # a second, top-K mAP every report carries beside mAP@K (the literature quotes both)
DISTINCT_OF = 1000  # distinct codes are counted among the first this many queries
GRID_ROWS, GRID_TOPK = 6, 10


# ------------------------------------------------------------------------------------------ shared with index
@dataclass
class LoadedCheckpoint:
    """A checkpoint loaded for encoding, with what manifests and reports record about it."""

    model: torch.nn.Module
    config: Dict[str, Any]
    path: Path  # the checkpoint folder itself (resolved, absolute)
    architecture: str
    bits: Tuple[int, ...]
    weights_sha256: str
    img_size: Optional[int]  # the training input size; None: the model's default

    @property
    def training(self) -> Dict[str, Any]:
        return self.config.get('training') or {}


def resolve_device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda but no CUDA device is available')
    return name


def checkpoint_summary(path: str | os.PathLike) -> Tuple[Path, Dict[str, Any]]:
    """The resolved checkpoint folder and its config, without loading weights (cheap checks first)."""
    ckpt = resolve_checkpoint_dir(path).resolve()
    return ckpt, read_checkpoint_config(ckpt)


def load_for_retrieval(path: str | os.PathLike, device: str = 'cpu') -> LoadedCheckpoint:
    """Load a checkpoint (folder or run folder) with its weights hash and training input size."""
    ckpt, config = checkpoint_summary(path)
    model = load_checkpoint(ckpt, device=device)
    img_size = (config.get('training') or {}).get('img_size')
    return LoadedCheckpoint(model=model, config=config, path=ckpt, architecture=str(config['architecture']),
                            bits=tuple(model.bits), weights_sha256=weights_sha256(ckpt / 'model.safetensors'),
                            img_size=int(img_size) if img_size else None)


def data_defaults(ckpt: LoadedCheckpoint, data: Optional[str], root: Optional[str], seed: Optional[int]
                  ) -> Tuple[str, Optional[str], int]:
    """``--data`` / ``--data-root`` / ``--seed`` defaulting to what the checkpoint was trained on."""
    trained_on = ckpt.config.get('dataset') or ckpt.training.get('data')
    if data is None:
        if not trained_on:
            raise UserError(f'{ckpt.path}: the checkpoint records no dataset; pass --data')
        data = str(trained_on)
    if root is None and data == trained_on:
        root = ckpt.training.get('data_root')
    if seed is None:
        seed = int(ckpt.training.get('seed') or 0)
    return data, root, seed


def _seeded_subset(n_total: int, n: Optional[int], seed: int, stream: int, what: str) -> Optional[np.ndarray]:
    if n is None:
        return None
    if n < 1:
        raise UserError(f'{what} must be a positive integer, got {n}')
    if n > n_total:
        raise UserError(f'{what} {n:,} is larger than the protocol\'s {n_total:,} items')
    return np.sort(np.random.default_rng([seed, stream]).choice(n_total, n, replace=False))


def protocol_sets(data: str, root: Optional[str], seed: int, transform: Any, query_subset: Optional[int] = None,
                  db_subset: Optional[int] = None, which: Sequence[str] = ('query', 'database')
                  ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The protocol's query / database sets (optionally seeded subsets) and a description of the split."""
    from deephash_zoo.data import build_retrieval_data

    sets = build_retrieval_data(data, root=root, seed=seed, transform=transform)
    info: Dict[str, Any] = {'data': data, 'seed': seed}
    out = {}
    for name, n, stream, flag in (('query', query_subset, 1, '--query-subset'),
                                  ('database', db_subset, 2, '--db-subset')):
        if name not in which:
            continue
        full = sets[name]
        idx = _seeded_subset(len(full), n, seed, stream, flag)
        out[name] = full if idx is None else full.subset(idx)
        short = 'queries' if name == 'query' else 'database'
        info[f'num_{short}'] = len(out[name])
        info[f'protocol_num_{short}'] = len(full)
        info['query_subset' if name == 'query' else 'db_subset'] = n
    first = next(iter(out.values()))
    info['num_labels'] = int(first.num_classes)
    info['multi_label'] = not all(s.single_label for s in out.values())
    return out, info


# ------------------------------------------------------------------------------------------------- eval only
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


def default_topk(data: str, num_labels: int) -> Optional[int]:
    """The mAP@K the papers report for this benchmark (None: the whole ranking)."""
    from deephash_zoo.data import protocols

    if data in protocols.PROTOCOLS:
        return protocols.PROTOCOLS[data].map_topk
    preset = 'coco' if data.startswith('coco:') else getattr(protocols, '_LABEL_COUNT_PRESET', {}).get(num_labels)
    return protocols.PROTOCOLS[preset].map_topk if preset in protocols.PROTOCOLS else None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-eval', description=(__doc__ or '').split('\n', 1)[0],
                                epilog='metrics.json schema: see `python -m pydoc deephash_zoo.cli.eval`.')
    p.add_argument('--checkpoint', required=True, help='checkpoint folder, or a run folder holding checkpoint/')
    p.add_argument('--data', default=None,
                   help="fashion-mnist | mosaic | cifar10[-1|-2]:DIR | list:PATH | coco:PATH "
                        "(default: the checkpoint's dataset)")
    p.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    p.add_argument('--bits', type=int, default=None, help='evaluate only this code length (default: all)')
    p.add_argument('--topk', type=_topk_arg, default=argparse.SUPPRESS,
                   help="K of mAP@K, or 'all' (default: the benchmark's, e.g. 5000 for NUS-WIDE/COCO, all otherwise)")
    p.add_argument('--query-subset', type=int, default=None, help='evaluate a seeded subset of this many queries')
    p.add_argument('--db-subset', type=int, default=None, help='rank a seeded subset of this many database items')
    p.add_argument('--img-size', type=int, default=None, help="input size (default: the checkpoint's training size)")
    p.add_argument('--out', type=Path, default=None, help='output folder (default: RUN/eval or CHECKPOINT/eval)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--seed', type=int, default=None, help="protocol seed (default: the checkpoint's training seed)")
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--no-plots', action='store_true', help='write metrics.json only (no matplotlib needed)')
    p.add_argument('--grid-rows', type=int, default=GRID_ROWS,
                   help='queries in retrieval_grid.png (default: %(default)s; 0: no grid)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def default_out(ckpt_dir: Path) -> Path:
    """``RUN/eval`` for ``RUN/checkpoint``, else ``CHECKPOINT/eval``."""
    return run_folder(ckpt_dir) / 'eval'


def write_metrics(report: Dict[str, Any], out: Path) -> Path:
    """``OUT/metrics.json``, written atomically; deephash-eval writes it last, so it marks a finished run."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / 'metrics.json'
    write_atomic(path, (json.dumps(report, indent=2) + '\n').encode())
    return path


def _num(value: Optional[float], spec: str) -> str:
    width = int(spec.split('.')[0])
    return f'{value:{spec}}' if value is not None else '-'.rjust(width)


def format_table(report: Dict[str, Any]) -> str:
    """The printed summary: one row per code length."""
    proto = report['protocol']
    k = proto['map_topk']
    lines = [f"{report['model']} on {report['dataset']}: {proto['num_queries']:,} queries, "
             f"{proto['num_database']:,} database items (seed {proto['seed']}), "
             f"{report['img_size']}x{report['img_size']} input"]
    head = (f"{'bits':>5}  {f'mAP@{k}':>9}  {'random':>7}  {'x random':>8}  {f'mAP@{MAP_AT}':>9}  {'tie-aware':>9}"
            + ''.join(f"  {f'P@{n}':>7}" for n in TABLE_NS) + f"  {'P(r<=2)':>7}")
    lines.append(head)
    for bits, r in report['results'].items():
        chance = r.get('random_codes', {}).get('map')
        at = r.get('map_at_1000', r['map'] if k == MAP_AT else None)
        row = (f"{bits:>5}  {r['map']:>9.4f}  {_num(chance, '7.4f')}  "
               f"{_num(r['map'] / chance if chance else None, '7.2f')}x  {_num(at, '9.4f')}  "
               f"{_num(r.get('map_tie_aware'), '9.4f')}"
               + ''.join(f"  {r['p_at_n'][str(n)]:>7.4f}" for n in TABLE_NS))
        lines.append(row + f"  {r['precision_radius2']:>7.4f}")
    lines.append(f"random: mAP@{k} of seeded random codes on the same queries and database (ranking by nothing); "
                 f"ties in Hamming distance ranked by {report['tie_break']}; tie-aware: mAP@all averaged over "
                 "every order of tied items (He et al. 2018)")
    if proto['num_database'] < max(TABLE_NS):
        lines.append(f"P@N with N above {proto['num_database']:,} counts the whole database")
    return '\n'.join(lines)


def _figure() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("matplotlib is not installed; pip install 'deephash-zoo[retrieval]' or pass --no-plots"
                          ) from None
    fig = Figure(figsize=(6, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # Agg canvas on this figure only: no pyplot, no global backend switch
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format='png')
    return buf.getvalue()


def plot_pngs(report: Dict[str, Any]) -> Dict[str, bytes]:
    """``pr_curve.png`` and ``p_at_n.png`` as PNG bytes, one line per code length."""
    title = f"{report['model']} on {report['dataset']}"
    pr = _figure()
    ax = pr.add_subplot()
    for bits, r in report['results'].items():
        ax.plot(r['pr_curve']['recall'], r['pr_curve']['precision'], marker='.', label=f'{bits} bits')
    ax.set(xlabel='recall', ylabel='precision', xlim=(0, 1.02), ylim=(0, 1.02),
           title=f'{title}\nprecision-recall within Hamming radius 0..bits')
    ax.grid(alpha=0.3)
    ax.legend()
    pn = _figure()
    ax = pn.add_subplot()
    n_db = report['protocol']['num_database']
    for bits, r in report['results'].items():
        ns = [int(n) for n in r['p_at_n'] if int(n) <= n_db] or [min(int(n) for n in r['p_at_n'])]
        ax.plot(ns, [r['p_at_n'][str(n)] for n in ns], marker='o', label=f'{bits} bits')
    ax.set(xscale='log', xlabel='N (top-ranked items)', ylabel='precision@N', ylim=(0, 1.02),
           title=f'{title}\nprecision of the top N')
    ax.grid(alpha=0.3)
    ax.legend()
    return {'pr_curve.png': _png(pr), 'p_at_n.png': _png(pn)}


@dataclass
class Evaluation:
    """What an evaluation computed: the metrics.json dict, and the sets and codes behind it (for the grid)."""

    report: Dict[str, Any]
    sets: Dict[str, Any]
    codes: Dict[str, Dict[int, np.ndarray]]  # 'query' / 'database' -> {bits: packed codes}


def evaluate_checkpoint(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything but printing and writing: the metrics.json dict."""
    return run_evaluation(args).report


def run_evaluation(args: argparse.Namespace) -> Evaluation:
    """Load, encode and score: :func:`evaluate_checkpoint` with the encoded sets kept."""
    from deephash_zoo.retrieval.encoding import encode_dataset_lengths, model_transform
    from deephash_zoo.retrieval.metrics import TIE_BREAK

    if not args.no_plots:
        _figure()  # fail on a missing matplotlib before minutes of encoding
    ckpt = load_for_retrieval(args.checkpoint, resolve_device(args.device))
    if args.bits is not None and args.bits not in ckpt.bits:
        raise UserError(f'{ckpt.architecture} has code lengths {ckpt.bits}; got --bits {args.bits}')
    lengths = ckpt.bits if args.bits is None else (args.bits,)
    img_size = args.img_size or ckpt.img_size
    transform = model_transform(ckpt.model, img_size)
    img_size = int(transform_size(ckpt.model, img_size))
    data, root, seed = data_defaults(ckpt, args.data, args.data_root, args.seed)
    sets, protocol = protocol_sets(data, root, seed, transform, args.query_subset, args.db_subset)
    topk = args.topk if 'topk' in args else default_topk(data, protocol['num_labels'])
    protocol['map_topk'] = 'all' if topk is None else topk
    device = next(ckpt.model.parameters()).device
    codes = {name: encode_dataset_lengths(ckpt.model, ds, lengths, args.batch_size, device,
                                          progress=not args.no_progress, desc=f'encoding {name}')
             for name, ds in sets.items()}
    results = {str(b): score_codes(codes['query'][b], codes['database'][b], sets['query'].labels,
                                   sets['database'].labels, topk, b, seed)
               for b in lengths}
    report = {
        'schema_version': SCHEMA_VERSION,
        'model': ckpt.architecture,
        'checkpoint': str(ckpt.path),
        'weights_sha256': ckpt.weights_sha256,
        'dataset': data,
        'protocol': protocol,
        'img_size': img_size,
        'results': results,
        'tie_break': TIE_BREAK,
        'package_version': deephash_zoo.__version__,
    }
    return Evaluation(report, sets, codes)


def score_codes(query: np.ndarray, database: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray,
                topk: Optional[int], bits: int, seed: int) -> Dict[str, Any]:
    """``evaluate``'s dict for one code length, with ``map_at_1000`` (mAP@1000, when K is not 1000 already)
    and ``random_codes`` (mAP@K, mAP@1000, P@N and precision within radius 2 of seeded random codes on the
    same labels: the level that ranking by nothing reaches, which each of the model's numbers is read against)."""
    from deephash_zoo.retrieval.metrics import evaluate, mean_average_precision, random_codes

    result = evaluate(query, database, query_labels, db_labels, topk=topk, ns=EVAL_NS, bits=bits)
    if topk != MAP_AT:
        result['map_at_1000'] = mean_average_precision(query, database, query_labels, db_labels,
                                                       min(MAP_AT, len(database)), bits=bits).map
    rq, rd = random_codes(len(query), len(database), bits, seed)
    chance = evaluate(rq, rd, query_labels, db_labels, topk=topk, ns=EVAL_NS, bits=bits)
    chance_at = chance['map'] if topk == MAP_AT else mean_average_precision(
        rq, rd, query_labels, db_labels, min(MAP_AT, len(database)), bits=bits).map
    result['random_codes'] = {'map': chance['map'], 'map_at_1000': chance_at, 'p_at_100': chance['p_at_n']['100'],
                              'p_at_n': chance['p_at_n'], 'precision_radius2': chance['precision_radius2'],
                              'map_tie_aware': chance['map_tie_aware'], 'seed': seed}
    result['distinct_codes'] = distinct_codes(query[:DISTINCT_OF])
    return result


def distinct_codes(codes: np.ndarray) -> Dict[str, Any]:
    """How many of ``codes`` (rows) differ: a model that maps everything to a few codes has collapsed."""
    n = len(codes)
    unique = len(np.unique(np.ascontiguousarray(codes), axis=0)) if n else 0
    return {'num_items': n, 'num_distinct': unique, 'fraction': unique / n if n else 0.0}


def grid_png(ev: Evaluation, rows: int) -> bytes:
    """``retrieval_grid.png``: seeded queries spread over the labels, each with its top 10 at the longest
    code length evaluated (ties by database index, as in the metrics)."""
    from deephash_zoo.retrieval import grid

    report, query, database = ev.report, ev.sets['query'], ev.sets['database']
    bits = max(int(b) for b in report['results'])
    picks = grid.pick_queries(query.labels, rows, seed=report['protocol']['seed'])
    positions, distances = grid.nearest(ev.codes['query'][bits][picks], ev.codes['database'][bits], GRID_TOPK)
    cells = grid.ranked_rows([query.load_image(int(i)) for i in picks], query.labels[picks], database,
                             positions, distances)
    proto = report['protocol']
    title = (f"{report['model']}, {bits}-bit codes, on {report['dataset']}: top {GRID_TOPK} of "
             f"{proto['num_database']:,} database items by Hamming distance (ties by database index)")
    return grid.grid_png(cells, title)


def transform_size(model: torch.nn.Module, img_size: Optional[int]) -> int:
    """The square input size the model transform produces."""
    if img_size:
        return img_size
    from timm.data import resolve_data_config

    return int(resolve_data_config(model=model)['input_size'][-1])


def write_evaluation(ev: Evaluation, out: Path, plots: bool = True, grid_rows: int = GRID_ROWS) -> List[str]:
    """The plots, the retrieval grid (``grid_rows`` > 0) and metrics.json into ``out``, each atomically;
    metrics.json last, so it marks a finished evaluation. Returns the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    files = plot_pngs(ev.report) if plots else {}
    if plots and grid_rows:
        files['retrieval_grid.png'] = grid_png(ev, grid_rows)
    for name, data in files.items():
        write_atomic(out / name, data)
    write_metrics(ev.report, out)
    return ['metrics.json', *files]


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.grid_rows < 0:
        raise UserError(f'--grid-rows must be 0 or more, got {args.grid_rows}')
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f'--out {args.out}: is a file; give a folder for metrics.json and the plots')
    ev = run_evaluation(args)
    out = args.out or default_out(Path(ev.report['checkpoint']))
    written = write_evaluation(ev, out, plots=not args.no_plots, grid_rows=args.grid_rows)
    print(format_table(ev.report))
    print(f"wrote {', '.join(written)} to {out}")
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
