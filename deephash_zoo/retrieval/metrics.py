"""Hamming-ranking retrieval metrics as defined in the deep-hashing literature, exact and fast.

Definitions (DPSH / HashNet / DATH evaluation code):

* ranking: database items sorted by Hamming distance to the query; ties are broken by database index
  (stable sort: the smaller index ranks first), see :data:`TIE_BREAK`;
* relevant: query and database item share at least one label (class indices: same class);
* mAP@K: per query, AP = (1/R_K) * sum over relevant ranks r <= K of (relevant items in the top r) / r,
  where R_K is the number of relevant items in the top K; a query with R_K = 0 has AP 0 and still
  counts in the mean.  ``topk=None`` ranks the whole database;
* P@N = relevant in the top N / N;  R@N = relevant in the top N / relevant in the whole database
  (0/0 := 0, i.e. a query without any relevant item has recall 0).  N larger than the database is
  clipped to the database size;
* Hamming-radius precision/recall: over the items within distance <= radius; the precision of an empty
  retrieved set is 0 (as in the literature's code) and recall with no relevant item is 0;
  both are averaged over all queries.  The precision-recall curve applies this to every radius 0..bits;
* nothing is excluded: a query that is also a database item retrieves itself at distance 0 (P@1 = 1).
  Pass disjoint sets (the published protocols do: test images against training images) or drop it first.

Speed and memory: queries are processed in chunks, so only ``chunk x database`` uint8 distances and
booleans are held (never a float matrix).  For mAP@K only candidates within each query's K-th distance
are ordered: a sampled distance histogram guesses a distance threshold, candidates are extracted with one
vectorised pass, and a stable radix sort on (query, distance) keys orders them.  Relevance is computed
only for the top K, with labels packed into uint64 words (no float matmul).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .codes import _to_numpy, as_packed, code_words, compiled_pack, distance_dtype, hamming_from_words
from .tie_aware import tie_aware_average_precision

__all__ = [
    'TIE_BREAK',
    'AtNResult',
    'check_topk',
    'MapResult',
    'PRCurve',
    'RadiusResult',
    'evaluate',
    'hamming_radius_precision_recall',
    'mean_average_precision',
    'precision_recall_at_n',
    'precision_recall_curve',
    'random_codes',
    'tie_aware_mean_average_precision',
]

TIE_BREAK = 'database index (stable)'
DEFAULT_NS: tuple[int, ...] = (10, 100, 500, 1000, 5000)

_CHUNK_ELEMENTS = 2_000_000  # query x database distances per chunk (~2 MB uint8, ~16 MB XOR buffer)
_SAMPLE_STRIDE = 16  # every 16th database item feeds the threshold guess
_MIN_SAMPLE = 1024  # below this many sampled items the exact histogram is cheap enough


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class MapResult:
    """mAP@K and the per-query APs it averages."""

    map: float
    topk: int | None
    per_query: np.ndarray = field(repr=False)
    bits: int
    num_queries: int
    num_database: int
    tie_break: str = TIE_BREAK

    def __float__(self) -> float:
        return self.map

    def to_dict(self) -> dict[str, Any]:
        return {
            'map': self.map,
            'map_topk': 'all' if self.topk is None else self.topk,
            'bits': self.bits,
            'num_queries': self.num_queries,
            'num_database': self.num_database,
            'tie_break': self.tie_break,
        }


@dataclass(frozen=True, eq=False)
class AtNResult:
    """Mean P@N and R@N for each N in ``ns``."""

    ns: tuple[int, ...]
    precision: np.ndarray
    recall: np.ndarray
    tie_break: str = TIE_BREAK


@dataclass(frozen=True)
class RadiusResult:
    """Mean precision and recall of the items within Hamming distance <= radius."""

    radius: int
    precision: float
    recall: float


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Mean precision and recall within every Hamming radius 0..bits."""

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray


# ---------------------------------------------------------------------------------------------- inputs
class _Relevance:
    """Answers 'do query i and database item j share a label?' without float matrix products."""

    def __init__(self, query_labels: Any, db_labels: Any, num_queries: int, num_database: int) -> None:
        ql = _to_numpy(query_labels, 'query_labels')
        dl = _to_numpy(db_labels, 'db_labels')
        for name, lab, n, codes in (('query', ql, num_queries, 'query'), ('database', dl, num_database, 'database')):
            if lab.ndim not in (1, 2):
                raise ValueError(
                    f'{name} labels must be (n,) class indices or (n, C) multi-hot; got shape {lab.shape}'
                )
            if lab.shape[0] != n:
                raise ValueError(
                    f'{name} labels have {lab.shape[0]} rows but there are {n} {codes} codes; '
                    'expected one label row per code'
                )
        if ql.ndim != dl.ndim:
            qw = 'class indices (1-D)' if ql.ndim == 1 else f'multi-hot width {ql.shape[1]}'
            dw = 'class indices (1-D)' if dl.ndim == 1 else f'multi-hot width {dl.shape[1]}'
            raise ValueError(f'label widths differ: query labels are {qw} but database labels are {dw}')
        self.multi = ql.ndim == 2
        if self.multi:
            if ql.shape[1] != dl.shape[1]:
                raise ValueError(
                    f'label widths differ: query labels have {ql.shape[1]} columns, database labels {dl.shape[1]}'
                )
            if ql.shape[1] == 0:
                raise ValueError('multi-hot labels have 0 columns; expected at least one label')
            self.q_words = _label_words(ql, 'query')
            self.db_word_rows = _label_words(dl, 'database')  # (n, words): the compiled kernel's form
        else:
            for name, lab in (('query', ql), ('database', dl)):
                if lab.dtype.kind not in 'iub':
                    raise ValueError(f'{name} class-index labels must be integers, got dtype {lab.dtype}')
            both = np.concatenate([ql.astype(np.int64), dl.astype(np.int64)])
            classes, inverse = np.unique(both, return_inverse=True)
            dt = np.uint16 if len(classes) <= 1 << 16 else np.int64
            self.q_class = inverse[:num_queries].astype(dt)
            self.db_class = inverse[num_queries:].astype(dt)

    @functools.cached_property
    def db_words(self) -> list[np.ndarray]:
        """The database label words one contiguous column per word: the NumPy path's gathers read one."""
        return [np.ascontiguousarray(w) for w in self.db_word_rows.T]

    def pairs(self, qs: slice, cols: np.ndarray) -> np.ndarray:
        """Relevance of ``(Q, K)`` database indices ``cols`` to the queries in ``qs``."""
        if not self.multi:
            return self.db_class[cols] == self.q_class[qs, None]
        qw = self.q_words[qs]
        acc = np.take(self.db_words[0], cols)
        acc &= qw[:, 0, None]
        for w in range(1, len(self.db_words)):
            more = np.take(self.db_words[w], cols)
            more &= qw[:, w, None]
            acc |= more
        return acc != 0

    def full(self, qs: slice) -> np.ndarray:
        """Relevance of every database item to the queries in ``qs``: ``(Q, num_database)`` bool."""
        if not self.multi:
            return np.equal(self.q_class[qs, None], self.db_class[None, :])
        qw = self.q_words[qs]
        acc = np.bitwise_and(qw[:, 0, None], self.db_words[0][None, :])
        for w in range(1, len(self.db_words)):
            acc |= np.bitwise_and(qw[:, w, None], self.db_words[w][None, :])
        return acc != 0


def _label_words(lab: np.ndarray, name: str) -> np.ndarray:
    fast = compiled_pack(lab, signs=False, width=-(-lab.shape[1] // 64) * 8)  # large arrays, where numba is
    if fast is not None and fast[1]:
        return fast[0].view(np.uint64)
    if lab.dtype != np.bool_:
        if lab.dtype.kind not in 'iuf':
            raise ValueError(f'{name} multi-hot labels must be numeric or bool, got dtype {lab.dtype}')
        if lab.dtype.kind == 'u':  # one reduction where nothing below 0 can occur
            valid = lab.max(initial=0) <= 1
        else:
            valid = ((lab == 0) | (lab == 1)).all()
        if not valid:
            raise ValueError(f'{name} multi-hot labels must contain only 0 and 1')
    packed = np.packbits(lab if lab.dtype.kind in 'bu' else lab.astype(bool), axis=1)  # packbits: nonzero is 1
    padded = np.zeros((packed.shape[0], -(-packed.shape[1] // 8) * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view(np.uint64)


@dataclass
class _Problem:
    q_words: np.ndarray
    db_words: np.ndarray
    dist_dtype: np.dtype
    bits: int
    relevance: _Relevance

    @property
    def num_queries(self) -> int:
        return self.q_words.shape[0]

    @property
    def num_database(self) -> int:
        return self.db_words.shape[0]


def _prepare(query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any, bits: int | None) -> _Problem:
    q = _to_numpy(query_codes, 'query codes')
    db = _to_numpy(db_codes, 'database codes')
    hint = bits
    if hint is None:  # a sign-code side tells how many bits a packed side holds
        signs = [a for a in (q, db) if a.ndim == 2 and a.dtype != np.uint8]
        hint = signs[0].shape[1] if signs else None
    try:
        q_packed, q_bits = as_packed(q, hint if q.dtype == np.uint8 else bits)
    except ValueError as e:
        raise ValueError(f'query codes: {e}') from None
    try:
        db_packed, db_bits = as_packed(db, hint if db.dtype == np.uint8 else bits)
    except ValueError as e:
        raise ValueError(f'database codes: {e}') from None
    if q_bits != db_bits:
        raise ValueError(
            f'query codes have {q_bits} bits but database codes have {db_bits}; expected the same code length'
        )
    if db_packed.shape[0] == 0:
        raise ValueError('the database is empty (0 codes); expected at least one database code')
    if q_packed.shape[0] == 0:
        raise ValueError('there are no queries (0 codes); expected at least one query code')
    rel = _Relevance(query_labels, db_labels, q_packed.shape[0], db_packed.shape[0])
    return _Problem(code_words(q_packed), code_words(db_packed), distance_dtype(q_packed.shape[1]), q_bits, rel)


def check_topk(topk: int | None) -> None:
    """K of mAP@K: a positive integer, or None for the whole ranking (which metrics.json records as "all")."""
    if topk is not None and (not _is_int(topk) or topk <= 0):
        raise ValueError(f'topk must be a positive integer, or None for the whole ranking (metrics.json writes that '
                         f'as "all"), got {topk!r}')


def _check_ns(ns: Iterable[int]) -> tuple[int, ...]:
    ns = tuple(ns)
    if not ns:
        raise ValueError('ns is empty; expected at least one positive N')
    for n in ns:
        if not _is_int(n) or n <= 0:
            raise ValueError(f'every N in ns must be a positive integer, got {n!r}')
    return tuple(int(n) for n in ns)


def _check_radius(radius: int) -> None:
    if not _is_int(radius) or radius < 0:
        raise ValueError(f'radius must be a non-negative integer, got {radius!r}')


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --------------------------------------------------------------------------------------------- ranking
def _exact_thresholds(d: np.ndarray, k: int, nvals: int) -> np.ndarray:
    """Per row, the distance of the k-th ranked item (exact histogram)."""
    q = d.shape[0]
    offsets = np.arange(q, dtype=np.intp)[:, None] * nvals
    hist = np.bincount((d + offsets).ravel(), minlength=q * nvals).reshape(q, nvals)
    return np.argmax(np.cumsum(hist, axis=1) >= k, axis=1).astype(d.dtype)


def _guess_thresholds(d: np.ndarray, k: int, nvals: int) -> np.ndarray:
    """Per row, a distance that very likely has >= k items at or below it, from a strided sample.

    A guess that is too small is detected and fixed by the caller; one that is too large only costs time.
    """
    q, n = d.shape
    if n < _SAMPLE_STRIDE * _MIN_SAMPLE:
        return _exact_thresholds(d, k, nvals)
    sample = d[:, ::_SAMPLE_STRIDE]
    offsets = np.arange(q, dtype=np.intp)[:, None] * nvals
    hist = np.bincount((sample + offsets).ravel(), minlength=q * nvals).reshape(q, nvals)
    expected = k * sample.shape[1] / n
    need = expected + 3.0 * math.sqrt(expected) + 1.0
    cum = np.cumsum(hist, axis=1)
    enough = cum >= need
    return np.where(enough.any(axis=1), np.argmax(enough, axis=1), nvals - 1).astype(d.dtype)


def _candidates(d: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of all entries ``d[i, j] <= thresholds[i]`` (row-major) and per-row bounds."""
    q, n = d.shape
    m = q * n
    # NumPy's nonzero() switches to a branchless loop above 10 % density, which is ~2x faster than its
    # memchr loop at the 3-8 % densities seen here; a constant True tail forces that path.
    pad = m // 10 + 1
    mask = np.empty(m + pad, dtype=bool)
    mask[m:] = True
    np.less_equal(d, thresholds[:, None], out=mask[:m].reshape(q, n))
    flat = np.flatnonzero(mask)[:-pad]
    bounds = np.searchsorted(flat, np.arange(q + 1, dtype=np.intp) * n)
    return flat, bounds


def _rank_topk(d: np.ndarray, k: int, bits: int, thresholds: np.ndarray | None = None) -> np.ndarray:
    """Database indices of each row's top k by (distance, database index): ``(Q, k)`` int64.

    ``thresholds`` overrides the sampled guess (tests use it to exercise the too-small-guess repair).
    """
    q, n = d.shape
    if k >= n:
        return np.argsort(d, axis=1, kind='stable')  # radix sort for uint8/uint16 keys
    nvals = bits + 1
    t = _guess_thresholds(d, k, nvals) if thresholds is None else np.asarray(thresholds, dtype=d.dtype).copy()
    while True:
        flat, bounds = _candidates(d, t)
        short = np.diff(bounds) < k
        if not short.any():
            break
        t[short] = _exact_thresholds(d[short], k, nvals)
    counts = np.diff(bounds)
    width = int(t.max()) + 1
    if q * width <= 1 << 16 and width < 1 << 16:  # uint16 keys: NumPy's stable argsort is then a radix sort
        key = np.repeat(np.arange(q, dtype=np.uint16) * np.uint16(width), counts)
        key += np.take(d.ravel(), flat)
    else:
        key = np.repeat(np.arange(q, dtype=np.int64) * width, counts)
        key += np.take(d.ravel(), flat)
    order = np.argsort(key, kind='stable')  # by (row, distance); equal keys keep database-index order
    ranked = np.take(flat, np.take(order, bounds[:-1, None] + np.arange(k, dtype=np.intp)))
    ranked -= np.arange(q, dtype=np.intp)[:, None] * n
    return ranked


def _average_precision(rel: np.ndarray) -> np.ndarray:
    """AP of each row of a ranked ``(Q, K)`` relevance matrix (0 for rows without a relevant item)."""
    q, k = rel.shape
    flat = np.flatnonzero(rel)
    counts = np.count_nonzero(rel, axis=1)
    rows = flat // k
    # the j-th relevant item of a row (j = 1, 2, ...) at rank c contributes j * (1 / c): the compiled kernel
    # multiplies by a table of 1 / c rather than dividing, and both paths give the same bits
    hits = np.arange(1, len(flat) + 1, dtype=np.float64)
    hits -= np.repeat(np.cumsum(counts) - counts, counts)
    hits *= 1.0 / (flat - rows * k + 1)
    sums = np.bincount(rows, weights=hits, minlength=q)
    return np.divide(sums, counts, out=np.zeros(q), where=counts > 0)


# ------------------------------------------------------------------------------------------------ scan
@dataclass
class _Scan:
    ap: np.ndarray | None = None  # (nq,) AP@K
    hits_at_n: np.ndarray | None = None  # (nq, len(ns)) relevant in the top N
    total_relevant: np.ndarray | None = None  # (nq,)
    within: np.ndarray | None = None  # (nq,) items within the radius
    within_relevant: np.ndarray | None = None
    hist: np.ndarray | None = None  # (nq, bits+1, 2): per distance, [..., 0] irrelevant, [..., 1] relevant


def _scan(
    p: _Problem,
    *,
    map_k: int = 0,
    ns: tuple[int, ...] = (),
    totals: bool = False,
    radius: int | None = None,
    hist: bool = False,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> _Scan:
    """One chunked pass over the queries computing only the requested per-query statistics.

    ``backend``: ``'numba'`` (the compiled kernel of :mod:`.kernels`, the ``fast`` extra), ``'numpy'``, or
    ``'auto'``: numba where it is installed, no ``chunk_size`` asks for the NumPy path's chunking and the codes
    have at most 255 bits (the kernel's distances are bytes). Both give the same numbers.
    """
    nq, n, nvals = p.num_queries, p.num_database, p.bits + 1
    if _use_kernel(backend, chunk_size, p.bits):
        return _scan_compiled(p, map_k=map_k, ns=ns, totals=totals, radius=radius, hist=hist)
    if chunk_size is None:
        chunk_size = max(1, min(_CHUNK_ELEMENTS // n, (1 << 16) // nvals))
    elif not _is_int(chunk_size) or chunk_size <= 0:
        raise ValueError(f'chunk_size must be a positive integer or None, got {chunk_size!r}')
    map_k = min(map_k, n)
    ns_eff = [min(x, n) for x in ns]
    depth = max([map_k, *ns_eff])
    need_full = totals or hist or radius is not None
    out = _Scan()
    if map_k:
        out.ap = np.zeros(nq)
    if ns:
        out.hits_at_n = np.zeros((nq, len(ns)), dtype=np.int64)
    if totals or hist:
        out.total_relevant = np.zeros(nq, dtype=np.int64)
    if radius is not None:
        out.within = np.zeros(nq, dtype=np.int64)
        out.within_relevant = np.zeros(nq, dtype=np.int64)
    if hist:
        out.hist = np.zeros((nq, nvals, 2), dtype=np.int64)

    for start in range(0, nq, chunk_size):
        qs = slice(start, min(start + chunk_size, nq))
        d = hamming_from_words(p.q_words[qs], p.db_words, p.dist_dtype)
        rel_full = p.relevance.full(qs) if need_full else None
        if rel_full is not None and (totals or hist):
            out.total_relevant[qs] = np.count_nonzero(rel_full, axis=1)
        if radius is not None:
            inside = d <= radius
            out.within[qs] = np.count_nonzero(inside, axis=1)
            out.within_relevant[qs] = np.count_nonzero(inside & rel_full, axis=1)
        if hist:
            q = d.shape[0]
            key = d.astype(np.intp)
            key <<= 1
            key |= rel_full
            key += np.arange(q, dtype=np.intp)[:, None] * (2 * nvals)
            out.hist[qs] = np.bincount(key.ravel(), minlength=q * 2 * nvals).reshape(q, nvals, 2)
        if depth:
            cols = _rank_topk(d, depth, p.bits)
            if rel_full is not None:
                rel = np.take_along_axis(rel_full, cols, axis=1)
            else:
                rel = p.relevance.pairs(qs, cols)
            if map_k:
                out.ap[qs] = _average_precision(rel[:, :map_k])
            for j, x in enumerate(ns_eff):
                out.hits_at_n[qs, j] = np.count_nonzero(rel[:, :x], axis=1)
    return out


BACKENDS = ('auto', 'numba', 'numpy')


def _use_kernel(backend: str, chunk_size: int | None, bits: int) -> bool:
    """Whether the compiled kernel runs: asked for, or ``auto`` with numba installed, no ``chunk_size`` asking
    for the NumPy path's chunking, and codes short enough for its byte distances."""
    from . import kernels

    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'numba' and not kernels.available():
        raise ImportError("backend='numba' needs numba; pip install 'deephash-zoo[fast]'")
    if backend == 'auto':
        return chunk_size is None and kernels.available() and bits <= kernels.MAX_BITS
    return backend == 'numba'


def _scan_compiled(p: _Problem, *, map_k: int, ns: tuple[int, ...], totals: bool, radius: int | None,
                   hist: bool) -> _Scan:
    """:func:`_scan`'s statistics from the compiled kernel (one pass per query, no distance matrix)."""
    from .kernels import scan_queries

    n = p.num_database
    map_k = min(map_k, n)
    r = scan_queries(p.q_words, p.db_words, p.relevance, p.bits, map_k=map_k, ns=tuple(min(x, n) for x in ns),
                     radius=radius, totals=totals or hist, hist=hist)
    out = _Scan()
    if map_k:
        out.ap = r['ap']
    if ns:
        out.hits_at_n = r['hits']
    if totals or hist:
        out.total_relevant = r['total']
    if radius is not None:
        out.within, out.within_relevant = r['within'], r['within_relevant']
    if hist:
        out.hist = r['hist']
    return out


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise a / b with 0 where b == 0 (the literature's empty-set convention)."""
    a = np.asarray(a, dtype=np.float64)
    return np.divide(a, b, out=np.zeros_like(a), where=np.asarray(b) > 0)


# -------------------------------------------------------------------------------------------- public
def mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | None = None,
    *,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> MapResult:
    """mAP@topk over the Hamming ranking (``topk=None``: whole database), literature definition.

    Codes are sign codes or packed uint8 (``bits`` tells a packed code's length if no sign side does).
    """
    check_topk(topk)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    k = p.num_database if topk is None else topk
    s = _scan(p, map_k=k, chunk_size=chunk_size, backend=backend)
    return MapResult(float(s.ap.mean()), topk, s.ap, p.bits, p.num_queries, p.num_database)


def tie_aware_mean_average_precision(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> MapResult:
    """mAP over the whole ranking with every tie group's order averaged out (He et al., CVPR 2018): what
    :func:`mean_average_precision` gives in expectation over random tie-breaks, whatever the tie-break."""
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    s = _scan(p, hist=True, chunk_size=chunk_size, backend=backend)
    ap = tie_aware_average_precision(s.hist)
    return MapResult(float(ap.mean()), None, ap, p.bits, p.num_queries, p.num_database,
                     tie_break='averaged (tie-aware)')


def precision_recall_at_n(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    ns: Sequence[int] = DEFAULT_NS,
    *,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> AtNResult:
    """Mean P@N and R@N over queries for each N (R@N with no relevant item in the database is 0)."""
    ns = _check_ns(ns)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    s = _scan(p, ns=ns, totals=True, chunk_size=chunk_size, backend=backend)
    return _at_n(s, ns, p.num_database)


def _at_n(s: _Scan, ns: tuple[int, ...], n_db: int) -> AtNResult:
    denom = np.array([min(x, n_db) for x in ns], dtype=np.float64)
    precision = (s.hits_at_n / denom).mean(axis=0)
    recall = _safe_div(s.hits_at_n, s.total_relevant[:, None]).mean(axis=0)
    return AtNResult(ns, precision, recall)


def hamming_radius_precision_recall(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    radius: int = 2,
    *,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> RadiusResult:
    """Mean precision/recall of the items within Hamming distance <= radius (empty set: precision 0)."""
    _check_radius(radius)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    s = _scan(p, totals=True, radius=radius, chunk_size=chunk_size, backend=backend)
    return RadiusResult(
        int(radius),
        float(_safe_div(s.within_relevant, s.within).mean()),
        float(_safe_div(s.within_relevant, s.total_relevant).mean()),
    )


def precision_recall_curve(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> PRCurve:
    """Mean precision and recall within every Hamming radius 0..bits (same conventions as radius 2)."""
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    s = _scan(p, hist=True, chunk_size=chunk_size, backend=backend)
    return _curve(s, p.bits)


def _curve(s: _Scan, bits: int) -> PRCurve:
    cum = np.cumsum(s.hist, axis=1)  # (nq, bits+1, 2): irrelevant / relevant items within each radius
    precision = _safe_div(cum[:, :, 1], cum.sum(axis=2)).mean(axis=0)
    recall = _safe_div(cum[:, :, 1], s.total_relevant[:, None]).mean(axis=0)
    return PRCurve(np.arange(bits + 1), precision, recall)


def evaluate(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    topk: int | None = None,
    ns: Sequence[int] = DEFAULT_NS,
    bits: int | None = None,
    chunk_size: int | None = None,
    backend: str = 'auto',
) -> dict[str, Any]:
    """All metrics from one pass, as a JSON-serialisable dict (read by the Hub model card).

    Schema: ``map``, ``map_topk`` (int or ``'all'``), ``map_tie_aware`` (mAP over the whole ranking as the
    expectation over every order of tied items, see :mod:`.tie_aware`; independent of the tie-break),
    ``p_at_n`` / ``r_at_n`` ({str(N): value}; string keys so the dict equals its JSON round trip),
    ``precision_radius2``, ``recall_radius2``, ``pr_curve`` ({'radius', 'precision', 'recall'} lists over
    radius 0..bits), ``bits``, ``num_queries``, ``num_database``, ``tie_break``.
    """
    check_topk(topk)
    ns = _check_ns(ns)
    p = _prepare(query_codes, db_codes, query_labels, db_labels, bits)
    k = p.num_database if topk is None else topk
    s = _scan(p, map_k=k, ns=ns, hist=True, chunk_size=chunk_size, backend=backend)
    at_n = _at_n(s, ns, p.num_database)
    curve = _curve(s, p.bits)
    r2 = min(2, p.bits)
    return {
        'map': float(s.ap.mean()),
        'map_topk': 'all' if topk is None else int(topk),
        'map_tie_aware': float(tie_aware_average_precision(s.hist).mean()),
        'p_at_n': {str(x): float(v) for x, v in zip(ns, at_n.precision, strict=True)},
        'r_at_n': {str(x): float(v) for x, v in zip(ns, at_n.recall, strict=True)},
        'precision_radius2': float(curve.precision[r2]),
        'recall_radius2': float(curve.recall[r2]),
        'pr_curve': {
            'radius': [int(r) for r in curve.radius],
            'precision': [float(v) for v in curve.precision],
            'recall': [float(v) for v in curve.recall],
        },
        'bits': p.bits,
        'num_queries': p.num_queries,
        'num_database': p.num_database,
        'tie_break': TIE_BREAK,
    }


def random_codes(num_query: int, num_database: int, bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random packed codes (query, database) of ``bits`` bits, seeded: scored against the real
    labels they give the level that ranking by nothing reaches, which every reported mAP is read against
    (Fashion-MNIST's 10 balanced classes: about 0.1; a mosaic where most pairs share a label: far higher)."""
    rng = np.random.default_rng([seed, 7, bits])
    width = (bits + 7) // 8
    pad = width * 8 - bits  # packbits order: the unused low bits of the last byte stay 0
    mask = np.uint8((0xFF << pad) & 0xFF)
    q = rng.integers(0, 256, (num_query, width), dtype=np.uint8)
    d = rng.integers(0, 256, (num_database, width), dtype=np.uint8)
    q[:, -1] &= mask
    d[:, -1] &= mask
    return q, d
