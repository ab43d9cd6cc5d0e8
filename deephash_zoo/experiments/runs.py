"""One cell of an experiment: train one model with one seed under a budget, then measure its retrieval.

The run goes through the same code a user runs (:func:`deephash_zoo.training.train`, then
``deephash-eval``'s evaluation with the budget's subsets), and leaves that ``metrics.json`` beside its
checkpoint, so ``deephash-card`` and ``deephash-push`` take the checkpoint as it is.
"""
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from deephash_zoo.training.trainer import TrainConfig, epoch_records, family_defaults, resolve_settings, train
from deephash_zoo.utils import tensors_file_sha256

from .budgets import Budget

__all__ = ['run_cell', 'cell_settings', 'chance_level', 'score_checkpoint']


def _train_config(model: str, data: str, budget: Budget, seed: int, run_dir: Path, init: Optional[str],
                  device: str) -> TrainConfig:
    family = family_defaults(model, budget.recipe)['family']
    return TrainConfig(model=model, data=data, out=str(run_dir), recipe=budget.recipe,
                       epochs=budget.epochs_for(family), batch_size=budget.batch_size, img_size=budget.img_size,
                       subset=budget.train_subset, max_steps=budget.max_steps, seed=seed,
                       data_seed=budget.eval_seed, log_every=10_000, init=init,
                       device=device, loss_args=budget.loss_args_for(family),
                       attn_gate_init=budget.attn_gate_init if family == 'dath' else None,
                       save_state=False, overwrite=True)


def cell_settings(model: str, data: str, budget: Budget, init: Optional[str],
                  init_digest: Optional[str] = None) -> Dict[str, Any]:
    """Everything but the seed that decides a cell's numbers: the resolved training settings, the budget's sizes
    and the digest of the weights it starts from (``tensors_file_sha256``). ``--resume`` keeps a cell only where
    this is unchanged."""
    cfg = _train_config(model, data, budget, 0, Path('unused'), init, 'cpu')
    return dict(resolve_settings(cfg), recipe=budget.recipe, budget=budget.name, data=data, epochs=cfg.epochs,
                max_steps=cfg.max_steps, subset=cfg.subset, loss_args=dict(cfg.loss_args),
                query_subset=budget.query_subset, db_subset=budget.db_subset, topk=budget.topk_for(data),
                eval_seed=budget.eval_seed,
                init_tensors_sha256=init_digest if init_digest or not init else tensors_file_sha256(init))


def score_checkpoint(run_dir: Path, data: str, budget: Budget, seed: int) -> Dict[str, Any]:
    """The metrics report of ``deephash-eval`` on the run's checkpoint, with the budget's subsets and mAP@K."""
    from deephash_zoo.evaluation import EvalOptions, evaluate_checkpoint

    return evaluate_checkpoint(EvalOptions(
        checkpoint=run_dir / 'checkpoint', data=data, seed=seed, device='cpu', topk=budget.topk_for(data),
        query_subset=budget.query_subset, db_subset=budget.db_subset, img_size=budget.img_size, plots=False,
        progress=False))


def run_cell(model: str, data: str, budget: Budget, seed: int, run_dir: Path, keep: bool = False,
             init: Optional[str] = None, device: str = 'auto',
             settings: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Train ``model`` on ``data`` with ``seed``, evaluate it, and return the row of the experiment's JSON.

    ``settings``: the cell's :func:`cell_settings`, recorded in the row (computed here when not given).

    ``keep``: leave the checkpoint (and its metrics.json) in ``run_dir`` for cards and pushing; without it
    the run folder is removed. No resumable training state is written: a cell is redone, not resumed.
    """
    t0 = time.perf_counter()
    train(_train_config(model, data, budget, seed, run_dir, init, device))
    train_wall = time.perf_counter() - t0
    epochs = epoch_records(run_dir)
    report = score_checkpoint(run_dir, data, budget, budget.eval_seed_for(seed))
    row = dict(
        model=model, data=data, seed=seed, eval_seed=budget.eval_seed_for(seed),
        results={b: dict(map=r['map'], p_at_n=r['p_at_n'], precision_radius2=r['precision_radius2'],
                         distinct_codes=(r.get('distinct_codes') or {}).get('fraction'))
                 for b, r in report['results'].items()},
        epoch_seconds=statistics.median(e['seconds'] for e in epochs),
        train_seconds=sum(e['seconds'] for e in epochs),
        images_per_s=statistics.median(e['images_per_s'] for e in epochs),
        steps=int(epochs[-1]['step']), epochs=len(epochs), final_loss=float(epochs[-1]['loss']),
        train_wall_seconds=train_wall, eval_seconds=time.perf_counter() - t0 - train_wall,
        weights_sha256=report['weights_sha256'],
        settings=settings if settings is not None else cell_settings(model, data, budget, init),
    )
    if keep:
        from deephash_zoo.evaluation import default_out, write_metrics

        write_metrics(report, default_out(run_dir / 'checkpoint'))  # where deephash-eval would put it
        row['checkpoint'] = str(run_dir / 'checkpoint')
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def chance_level(data: str, budget: Budget, seed: int, bits: int = 32) -> Dict[str, float]:
    """mAP and P@100 of random codes on the budget's query/database sets: what ranking by nothing scores.

    On the mosaic most pairs share a label, so its chance level is high; a table is read against it.
    """
    from deephash_zoo.evaluation import EVAL_NS, protocol_sets
    from deephash_zoo.retrieval.metrics import evaluate

    sets, _ = protocol_sets(data, None, seed, None, budget.query_subset, budget.db_subset)
    rng = np.random.default_rng([seed, 7])
    q = rng.integers(0, 256, (len(sets['query']), bits // 8), dtype=np.uint8)
    d = rng.integers(0, 256, (len(sets['database']), bits // 8), dtype=np.uint8)
    r = evaluate(q, d, sets['query'].labels, sets['database'].labels, topk=budget.topk_for(data), ns=EVAL_NS,
                 bits=bits)
    return dict(map=r['map'], p_at_100=r['p_at_n']['100'], bits=bits)
