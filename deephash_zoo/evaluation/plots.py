"""The figures an evaluation writes: the precision-recall curve, P@N, and the retrieval grid.

Matplotlib draws on its own Agg canvas per figure (no pyplot, no global backend switch), so importing
this module costs nothing until a figure is asked for, and a missing matplotlib is named before minutes
of encoding (:func:`require_matplotlib`).
"""
from __future__ import annotations

import io
from typing import Any, Dict

__all__ = ['require_matplotlib', 'plot_pngs', 'grid_png', 'GRID_ROWS', 'GRID_TOPK']

GRID_ROWS, GRID_TOPK = 6, 10


def _figure() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("matplotlib is not installed; pip install 'deephash-zoo[retrieval]' or pass --no-plots "
                          '(plots=False)') from None
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


def require_matplotlib() -> None:
    """Raise the one-line ImportError now rather than after the encoding."""
    _figure()


def grid_png(report: Dict[str, Any], sets: Dict[str, Any], codes: Dict[str, Dict[int, Any]], rows: int) -> bytes:
    """``retrieval_grid.png``: seeded queries spread over the labels, each with its top 10 at the longest
    code length evaluated (ties by database index, as in the metrics). ``sets`` and ``codes`` are an
    evaluation's query / database sets and their packed codes per length."""
    from deephash_zoo.retrieval import grid

    query, database = sets['query'], sets['database']
    bits = max(int(b) for b in report['results'])
    picks = grid.pick_queries(query.labels, rows, seed=report['protocol']['seed'])
    positions, distances = grid.nearest(codes['query'][bits][picks], codes['database'][bits], GRID_TOPK)
    cells = grid.ranked_rows([query.load_image(int(i)) for i in picks], query.labels[picks], database,
                             positions, distances)
    proto = report['protocol']
    title = (f"{report['model']}, {bits}-bit codes, on {report['dataset']}: top {GRID_TOPK} of "
             f"{proto['num_database']:,} database items by Hamming distance (ties by database index)")
    return grid.grid_png(cells, title)
