"""Evaluating a checkpoint on a benchmark's query / database protocol: the library behind ``deephash-eval``,
the zoo build and the experiments (the command-line layer only parses flags and prints).

* :mod:`.checkpoints`: a checkpoint loaded for retrieval (folder, run folder, ``local-dir:``, ``hf-hub:``).
* :mod:`.protocol`: the query / database sets and seeded subsets; the mAP@K each benchmark reports.
* :mod:`.report`: :func:`run_evaluation` and the ``metrics.json`` schema, written by :func:`write_evaluation`.
* :mod:`.plots`: the precision-recall and P@N figures and the retrieval grid.
"""
from .checkpoints import LoadedCheckpoint, checkpoint_summary, data_defaults, load_for_retrieval, resolve_device
from .protocol import default_topk, protocol_sets
from .report import (
    BENCHMARK_TOPK,
    EVAL_NS,
    SCHEMA_VERSION,
    EvalOptions,
    Evaluation,
    default_out,
    evaluate_checkpoint,
    format_table,
    run_evaluation,
    score_codes,
    write_evaluation,
    write_metrics,
)

__all__ = ['LoadedCheckpoint', 'checkpoint_summary', 'data_defaults', 'load_for_retrieval', 'resolve_device',
           'default_topk', 'protocol_sets', 'BENCHMARK_TOPK', 'EVAL_NS', 'SCHEMA_VERSION', 'EvalOptions',
           'Evaluation', 'default_out', 'evaluate_checkpoint', 'format_table', 'run_evaluation', 'score_codes',
           'write_evaluation', 'write_metrics']
