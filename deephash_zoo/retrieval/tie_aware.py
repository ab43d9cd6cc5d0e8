"""Tie-aware average precision (He, Cakir, Bargal, Sclaroff, "Hashing as Tie-Aware Learning to Rank", CVPR 2018).

Hamming distances take only ``bits + 1`` values, so a query's ranking is mostly ties, and the usual AP depends
on how they are broken (the literature's code: database index, or an unstable argsort). Tie-aware AP is the
expectation of AP over every ordering of the items inside each tie group, so it depends on the codes alone.

For a query, group the database by distance d: ``n_d`` items, ``r_d`` relevant, ``N_d`` / ``R_d`` items /
relevant items at smaller distances, ``R`` relevant in all. The item at place i of group d (rank N_d + i) is
relevant with probability r_d / n_d; given that, (i - 1)(r_d - 1)/(n_d - 1) relevant items precede it in its
group on average, so::

    AP_T = 1/R * sum_d r_d/n_d * sum_{i=1..n_d} (R_d + 1 + (i - 1) c_d) / (N_d + i),   c_d = (r_d - 1)/(n_d - 1)

and the inner sum is ``n_d c_d + (R_d + 1 - c_d - c_d N_d) (H(N_d + n_d) - H(N_d))`` with H the harmonic
numbers: O(bits) per query once the per-distance counts are known (the counts the radius metrics use).
"""
from __future__ import annotations

import numpy as np

__all__ = ['tie_aware_average_precision']


def _harmonic(n: int) -> np.ndarray:
    """H(0..n): H(k) = 1 + 1/2 + ... + 1/k."""
    h = np.zeros(n + 1)
    np.cumsum(1.0 / np.arange(1, n + 1), out=h[1:])
    return h


def tie_aware_average_precision(hist: np.ndarray) -> np.ndarray:
    """Tie-aware AP of each query from its per-distance counts ``hist`` ``(nq, bits + 1, 2)``: ``[..., 0]``
    irrelevant and ``[..., 1]`` relevant database items at each distance. A query without relevant items has
    AP 0 (the convention of the usual mAP)."""
    hist = np.asarray(hist, dtype=np.int64)
    if hist.ndim != 3 or hist.shape[2] != 2:
        raise ValueError(f'expected per-distance counts of shape (queries, bits + 1, 2), got {hist.shape}')
    n = hist.sum(axis=2)
    r = hist[..., 1]
    before_n = np.cumsum(n, axis=1) - n
    before_r = np.cumsum(r, axis=1) - r
    total_r = r.sum(axis=1)
    h = _harmonic(int(n.sum(axis=1).max(initial=0)))
    c = np.divide(r - 1, n - 1, out=np.zeros(n.shape), where=n > 1)
    inner = n * c + (before_r + 1 - c - c * before_n) * (h[before_n + n] - h[before_n])
    share = np.divide(r, n, out=np.zeros(n.shape), where=n > 0)
    return np.divide((share * inner).sum(axis=1), total_r, out=np.zeros(len(n)), where=total_r > 0)
