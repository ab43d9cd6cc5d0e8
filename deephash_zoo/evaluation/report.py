"""Evaluate a checkpoint: encode a benchmark's query and database sets once, score every code length.

The library behind ``deephash-eval``, the zoo build and the experiments. :func:`run_evaluation` takes an
:class:`EvalOptions` and returns the ``metrics.json`` dict with the sets and codes behind it;
:func:`write_evaluation` writes it, with its plots, into a folder (default :func:`default_out`):

* ``metrics.json``, read by the Hugging Face model cards; its schema (``schema_version`` 1) is stable::

    {
      "schema_version": 1,
      "model": "dath_n_16",                 # the checkpoint's timm architecture
      "checkpoint": "/abs/path/checkpoint", # the checkpoint folder evaluated
      "weights_sha256": "...",              # sha256 of its model.safetensors
      "dataset": "fashion-mnist",           # the --data name (fashion-mnist | mosaic | cifar10:DIR | list:PATH | ...)
      "protocol": {
        "data": "fashion-mnist", "seed": 0,  # build_retrieval_data(data, seed=seed) made the split
        "num_queries": 10000, "num_database": 60000,                 # what was evaluated
        "protocol_num_queries": 10000, "protocol_num_database": 60000,  # the full split
        "query_subset": null, "db_subset": null,  # --query-subset / --db-subset (seeded subsets of the split)
        "map_topk": "all",                   # K of mAP@K (int) or "all"
        "num_labels": 10, "multi_label": false
      },
      "img_size": 224,                       # input size the images were resized to
      "results": {"16": evaluate(...) dict, ...},  # one entry per code length, keys str(bits), ascending
      "tie_break": "database index (stable)",
      "package_version": "0.1.0",
      "machine": {"cpu": "...", "cores": "2", "device": "cpu", "torch": "...", ...}  # where it was scored
    }

  Each ``results`` entry is :func:`deephash_zoo.retrieval.metrics.evaluate`'s dict (``map``, ``map_topk``,
  ``p_at_n`` / ``r_at_n`` keyed by str(N) for N in :data:`EVAL_NS`, ``precision_radius2``,
  ``recall_radius2``, ``pr_curve``, ``bits``, ``num_queries``, ``num_database``, ``tie_break``,
  ``map_tie_aware``: mAP@all averaged over every order of tied items) with three more keys:
  ``map_at_1000`` (mAP@1000, absent when K is 1000), ``random_codes`` (``map``, ``map_at_1000``,
  ``p_at_100`` (kept for older readers), ``p_at_n`` at every N, ``precision_radius2`` and ``map_tie_aware`` of
  seeded random codes on the same query and database labels, and their ``seed``: the level each number is read
  against; their ``precision_radius2`` is near 0 from 32 bits, since an empty radius counts 0) and
  ``distinct_codes`` (``num_items``, ``num_distinct``, ``fraction`` among the first 1,000 queries). N above
  the database size counts the whole database, and a ``map_topk`` above it ranks the whole database.
* ``pr_curve.png`` (precision vs recall over Hamming radius 0..bits) and ``p_at_n.png`` (P@N vs N), one
  line per code length.
* ``retrieval_grid.png``: ``--grid-rows`` queries (default 6, picked by the protocol seed and spread over the
  labels, :func:`deephash_zoo.retrieval.grid.pick_queries`), each followed by its top 10 database items at the
  longest code length evaluated, with distances, relevant ones framed green and irrelevant ones red.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

import deephash_zoo
from deephash_zoo.hub.folder import hub_checkpoint_name, run_folder
from deephash_zoo.utils import run_machine, write_atomic

from .checkpoints import data_defaults, load_for_retrieval, resolve_device
from .plots import GRID_ROWS, grid_png, plot_pngs, require_matplotlib
from .protocol import default_topk, protocol_sets

__all__ = ['SCHEMA_VERSION', 'EVAL_NS', 'TABLE_NS', 'MAP_AT', 'DISTINCT_OF', 'BENCHMARK_TOPK', 'EvalOptions',
           'Evaluation', 'run_evaluation', 'evaluate_checkpoint', 'score_codes', 'distinct_codes', 'default_out',
           'write_metrics', 'write_evaluation', 'format_table', 'transform_size']

SCHEMA_VERSION = 1
EVAL_NS: Tuple[int, ...] = (10, 50, 100, 200, 500, 1000, 2000, 5000)  # P@N / R@N points (DEFAULT_NS and more)
TABLE_NS: Tuple[int, ...] = (100, 500, 1000)
MAP_AT = 1000  # a second, top-K mAP every report carries beside mAP@K (the literature quotes both)
DISTINCT_OF = 1000  # distinct codes are counted among the first this many queries
BENCHMARK_TOPK = 'benchmark'  # EvalOptions.topk: the K the benchmark's papers report (None: the whole ranking)


@dataclass
class EvalOptions:
    """What to evaluate and how; every field but ``checkpoint`` defaults to what the checkpoint records.

    ``checkpoint``: a checkpoint folder, a run folder holding ``checkpoint/``, ``local-dir:FOLDER`` or
    ``hf-hub:ORG/NAME[@REV]``. ``topk``: K of mAP@K, None for the whole ranking, or
    :data:`BENCHMARK_TOPK` for the benchmark's own (5000 for NUS-WIDE / COCO, all otherwise).
    """

    checkpoint: Union[str, os.PathLike]
    data: Optional[str] = None
    data_root: Optional[str] = None
    bits: Optional[int] = None
    topk: Union[int, None, str] = BENCHMARK_TOPK
    query_subset: Optional[int] = None
    db_subset: Optional[int] = None
    img_size: Optional[int] = None
    batch_size: int = 64
    seed: Optional[int] = None
    device: str = 'auto'
    plots: bool = True
    progress: bool = True


@dataclass
class Evaluation:
    """What an evaluation computed: the metrics.json dict, and the sets and codes behind it (for the grid)."""

    report: Dict[str, Any]
    sets: Dict[str, Any]
    codes: Dict[str, Dict[int, np.ndarray]]  # 'query' / 'database' -> {bits: packed codes}


def evaluate_checkpoint(options: EvalOptions) -> Dict[str, Any]:
    """Everything but writing: the metrics.json dict."""
    return run_evaluation(options).report


def run_evaluation(options: EvalOptions) -> Evaluation:
    """Load, encode and score: :func:`evaluate_checkpoint` with the encoded sets kept."""
    from deephash_zoo.retrieval.encoding import encode_dataset_lengths, model_transform
    from deephash_zoo.retrieval.metrics import TIE_BREAK, check_topk

    if options.plots:
        require_matplotlib()  # fail on a missing matplotlib before minutes of encoding
    ckpt = load_for_retrieval(options.checkpoint, resolve_device(options.device))
    if options.bits is not None and options.bits not in ckpt.bits:
        raise ValueError(f'{ckpt.architecture} has code lengths {ckpt.bits}; got --bits {options.bits}')
    lengths = ckpt.bits if options.bits is None else (options.bits,)
    img_size = ckpt.img_size if options.img_size is None else options.img_size  # 0 is refused, not the default
    transform = model_transform(ckpt.model, img_size)
    img_size = int(transform_size(ckpt.model, img_size))
    data, root, seed = data_defaults(ckpt, options.data, options.data_root, options.seed)
    sets, protocol = protocol_sets(data, root, seed, transform, options.query_subset, options.db_subset)
    topk = default_topk(data, protocol['num_labels']) if options.topk == BENCHMARK_TOPK else options.topk
    check_topk(topk)  # before minutes of encoding, not after
    protocol['map_topk'] = 'all' if topk is None else topk
    device = next(ckpt.model.parameters()).device
    codes = {name: encode_dataset_lengths(ckpt.model, ds, lengths, options.batch_size, device,
                                          progress=options.progress, desc=f'encoding {name}')
             for name, ds in sets.items()}
    results = {str(b): score_codes(codes['query'][b], codes['database'][b], sets['query'].labels,
                                   sets['database'].labels, topk, b, seed)
               for b in lengths}
    report = {
        'schema_version': SCHEMA_VERSION,
        'model': ckpt.architecture,
        'checkpoint': str(options.checkpoint) if hub_checkpoint_name(options.checkpoint) else str(ckpt.path),
        'weights_sha256': ckpt.weights_sha256,
        'dataset': data,
        'protocol': protocol,
        'img_size': img_size,
        'results': results,
        'tie_break': TIE_BREAK,
        'package_version': deephash_zoo.__version__,
        'machine': run_machine(device),
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


def transform_size(model: torch.nn.Module, img_size: Optional[int]) -> int:
    """The square input size the model transform produces."""
    if img_size is not None:
        return img_size
    from timm.data import resolve_data_config

    return int(resolve_data_config(model=model)['input_size'][-1])


def default_out(checkpoint: Union[str, os.PathLike]) -> Path:
    """``RUN/eval`` for ``RUN/checkpoint``, else ``CHECKPOINT/eval``; for a Hub name (whose folder is the
    read-only Hugging Face cache) ``runs/hf-hub/ORG--NAME/eval`` under the current folder."""
    repo = hub_checkpoint_name(checkpoint)
    if repo is not None:
        return Path('runs') / 'hf-hub' / repo.replace('/', '--').replace('@', '--') / 'eval'
    return run_folder(checkpoint) / 'eval'


def write_metrics(report: Dict[str, Any], out: Union[str, os.PathLike]) -> Path:
    """``OUT/metrics.json``, written atomically; deephash-eval writes it last, so it marks a finished run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / 'metrics.json'
    write_atomic(path, (json.dumps(report, indent=2) + '\n').encode())
    return path


def write_evaluation(ev: Evaluation, out: Union[str, os.PathLike], plots: bool = True,
                     grid_rows: int = GRID_ROWS) -> List[str]:
    """The plots, the retrieval grid (``grid_rows`` > 0) and metrics.json into ``out``, each atomically;
    metrics.json last, so it marks a finished evaluation. Returns the file names written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = plot_pngs(ev.report) if plots else {}
    if plots and grid_rows:
        files['retrieval_grid.png'] = grid_png(ev.report, ev.sets, ev.codes, grid_rows)
    for name, data in files.items():
        write_atomic(out / name, data)
    write_metrics(ev.report, out)
    return ['metrics.json', *files]


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
