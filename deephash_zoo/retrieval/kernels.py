"""Compiled per-query retrieval statistics (numba, the ``fast`` extra): one pass over the database per query.

The NumPy path (:mod:`.metrics`) materialises a chunk of the distance matrix, then ranks it with a sort; this
kernel does per query what the work needs and no more, in parallel over queries:

1. one vectorised sweep over the database: ``popcount(q XOR d)`` per item (LLVM ``ctpop``: VPOPCNTQ on
   AVX-512 CPUs) into a per-thread byte buffer; with totals, radius or tie-aware statistics asked for, the
   (distance, relevance) histogram of every item;
2. the distance ``t`` at which the top ``depth`` items end: exact from that histogram, else guessed from
   every 16th item with a 3-sigma margin (a guess that proves short falls back to the exact count);
3. a sweep collecting the items at distance ``<= t`` (a few percent of the database), eight byte
   distances per uint64 operation, storing only the candidates;
4. a counting sort of those by distance, stable, so ties stay in database-index order (the tie-break every
   other path uses), looking up their relevance only now;
5. AP@K and hits@N from that ranked relevance.

Work is ``num_queries x num_database`` popcounts plus two byte sweeps: no sort, no per-query allocation
larger than the database's distances. Results equal the NumPy path exactly (``tests/test_retrieval_kernels``).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import numpy as np

__all__ = ['available', 'scan_queries', 'words64', 'popcount_sweep']

try:  # an optional dependency: without it every metric runs the NumPy path
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def available() -> bool:
    """Whether the compiled kernel can run here (numba importable)."""
    return numba is not None


def words64(words: np.ndarray) -> np.ndarray:
    """``(n, w)`` code or label words of any unsigned width as ``(n, ceil(bytes/8))`` uint64, zero-padded."""
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape[0], -1)
    width = -(-raw.shape[1] // 8) * 8
    if width != raw.shape[1]:
        padded = np.zeros((raw.shape[0], width), dtype=np.uint8)
        padded[:, :raw.shape[1]] = raw
        raw = padded
    return np.ascontiguousarray(raw).view(np.uint64)


if numba is not None:
    @intrinsic
    def _popcount(typingctx: Any, x: Any) -> Any:
        """LLVM's ctpop on a uint64: one POPCNT instruction where the CPU has it."""
        sig = types.uint64(types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.ctpop(args[0])
        return sig, codegen

    @intrinsic
    def _trailing_zeros(typingctx: Any, x: Any) -> Any:
        """LLVM's cttz on a uint64 (TZCNT): the index of the lowest set bit."""
        sig = types.uint64(types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
        return sig, codegen

    @njit(inline='always')
    def _collect_within(dist: np.ndarray, t: int, cand: np.ndarray) -> int:
        """cand[:m] = the indices j with ``dist[j] <= t``, in order; returns m. For byte distances < 128.

        Eight distances at a time as one uint64 (SWAR): ``((x | 0x80..) - (t+1) * 0x01..) & 0x80..`` sets the
        high bit of each byte >= t + 1 with no borrow between bytes (every byte < 128); a multiply gathers the
        eight flags into a byte, eight bytes make a 64-item mask, and only its set bits cost a store. A byte
        loop appending every item costs about 2 cycles per item; this about 2 per candidate (a few percent).
        """
        n = dist.shape[0]
        blocks = n // 64
        words = dist[:blocks * 64].view(np.uint64)
        threshold = np.uint64(t + 1) * np.uint64(0x0101010101010101)
        high = np.uint64(0x8080808080808080)
        gather = np.uint64(0x0102040810204080)
        one = np.uint64(1)
        m = 0
        for b in range(blocks):
            mask = np.uint64(0)
            for k in range(8):
                x = words[b * 8 + k]
                within = ~((x | high) - threshold) & high
                mask |= (((within >> np.uint64(7)) * gather) >> np.uint64(56)) << np.uint64(8 * k)
            base = b * 64
            while mask != 0:
                cand[m] = base + np.int64(_trailing_zeros(mask))
                m += 1
                mask &= mask - one
        for j in range(blocks * 64, n):
            cand[m] = j
            m += dist[j] <= t
        return m

    @njit(inline='always')
    def _collect(dist: np.ndarray, t: int, cand: np.ndarray, nvals: int) -> int:
        """cand[:m] = the indices j with ``dist[j] <= t``, in order; returns m. SWAR where every distance is a
        byte below 128 (up to 127 bits), else a branch-free append."""
        if dist.itemsize == 1 and nvals <= 128:
            return _collect_within(dist, t, cand)
        m = 0
        for j in range(dist.shape[0]):
            cand[m] = j
            m += dist[j] <= t
        return m

    @njit(inline='always')
    def _relevant(i: int, j: int, q_class: np.ndarray, db_class: np.ndarray, q_lab: np.ndarray,
                  db_lab: np.ndarray, multi: bool) -> int:
        """Whether database item j shares a label with query i (``db_lab`` is word-major: (words, n))."""
        if not multi:
            return 1 if q_class[i] == db_class[j] else 0
        for w in range(q_lab.shape[1]):
            if q_lab[i, w] & db_lab[w, j]:
                return 1
        return 0

    @njit(inline='always')
    def _relevance_keys(i: int, dist: np.ndarray, q_class: np.ndarray, db_class: np.ndarray, q_lab: np.ndarray,
                        db_lab: np.ndarray, multi: bool, key: np.ndarray, acc: np.ndarray) -> None:
        """key[j] = 2 * distance + relevance of every item, in loops that vectorise."""
        n = dist.shape[0]
        if not multi:
            qc = q_class[i]
            for j in range(n):
                key[j] = 2 * np.int32(dist[j]) + np.int32(db_class[j] == qc)
            return
        acc[:] = 0
        for w in range(q_lab.shape[1]):
            qw = q_lab[i, w]
            for j in range(n):
                acc[j] |= qw & db_lab[w, j]
        for j in range(n):
            key[j] = 2 * np.int32(dist[j]) + np.int32(acc[j] != 0)

    @njit(inline='always')
    def _distances(qi: np.ndarray, db_words: np.ndarray, dist: np.ndarray) -> None:
        """dist[j] = Hamming distance of the query's words to item j; ``db_words`` is word-major (words, n), so
        each word's loop runs over contiguous memory and vectorises."""
        nw, n = db_words.shape
        q0 = qi[0]
        row = db_words[0]
        for j in range(n):
            dist[j] = _popcount(q0 ^ row[j])
        for w in range(1, nw):
            qw = qi[w]
            row = db_words[w]
            for j in range(n):
                dist[j] += _popcount(qw ^ row[j])

    @njit(inline='always')
    def _histogram(keys: np.ndarray, stride: int, nkeys: int) -> np.ndarray:
        """Counts of ``keys[::stride]``, in four interleaved histograms so repeated keys do not serialise."""
        h = np.zeros((4, nkeys), dtype=np.int64)
        m = (keys.shape[0] + stride - 1) // stride
        m4 = m // 4 * 4
        for r in range(0, m4, 4):
            j = r * stride
            h[0, keys[j]] += 1
            h[1, keys[j + stride]] += 1
            h[2, keys[j + 2 * stride]] += 1
            h[3, keys[j + 3 * stride]] += 1
        for r in range(m4, m):
            h[0, keys[r * stride]] += 1
        out = np.zeros(nkeys, dtype=np.int64)
        for b in range(4):
            for k in range(nkeys):
                out[k] += h[b, k]
        return out

    @njit(inline='always')
    def _first_at(counts: np.ndarray, need: float) -> int:
        """The smallest distance whose cumulative count reaches ``need`` (the last one if none does)."""
        acc = 0
        for d in range(counts.shape[0]):
            acc += counts[d]
            if acc >= need:
                return d
        return counts.shape[0] - 1

    @njit(parallel=True, cache=True, nogil=True)
    def _sweep_kernel(q_words, db_words, chunks, out):  # pragma: no cover
        """Only the compulsory work: every query's XOR + popcount against every item, stored as bytes."""
        nq = q_words.shape[0]
        for c in prange(chunks):
            dist = np.empty(db_words.shape[1], dtype=np.uint8)
            for i in range(c * nq // chunks, (c + 1) * nq // chunks):
                _distances(q_words[i], db_words, dist)
                out[i] = dist[i % dist.shape[0]]

    @njit(inline='always')
    def _one_query(i, q_words, db_words, q_class, db_class, q_lab, db_lab, multi, nvals, map_k, ns, radius, full,
                   depth, dist, key, acc, cand, ranked, ap_out, hits_out, total_out, within_out, within_rel_out,
                   hist_out):  # pragma: no cover
        """Query i's statistics, in buffers its thread allocated once (a fresh half-megabyte buffer per query
        costs page faults that took longer than the popcounts)."""
        n = db_words.shape[1]
        # 1. every distance: XOR + popcount, vectorised
        _distances(q_words[i], db_words, dist)
        if full:  # the (distance, relevance) histogram: totals, radius, tie-aware AP, PR curve
            _relevance_keys(i, dist, q_class, db_class, q_lab, db_lab, multi, key, acc)
            flat = _histogram(key, 1, 2 * nvals)
            total = 0
            for d in range(nvals):
                hist_out[i, d, 0] = flat[2 * d]
                hist_out[i, d, 1] = flat[2 * d + 1]
                total += flat[2 * d + 1]
            total_out[i] = total
            if radius >= 0:
                inside = 0
                inside_rel = 0
                for d in range(min(radius + 1, nvals)):
                    inside += flat[2 * d] + flat[2 * d + 1]
                    inside_rel += flat[2 * d + 1]
                within_out[i] = inside
                within_rel_out[i] = inside_rel
        if depth == 0:
            return
        # 2. the distance t where the top ``depth`` ends: exact from the full histogram, else guessed from
        #    every 16th item with a 3-sigma margin and checked below (a short guess falls back to exact)
        if full:
            counts = np.zeros(nvals, dtype=np.int64)
            for d in range(nvals):
                counts[d] = hist_out[i, d, 0] + hist_out[i, d, 1]
            t = _first_at(counts, depth)
        elif n >= 16 * 1024:
            sample = _histogram(dist, 16, nvals)
            expected = depth * ((n + 15) // 16) / n
            t = _first_at(sample, expected + 3.0 * np.sqrt(expected) + 1.0)
        else:
            t = _first_at(_histogram(dist, 1, nvals), depth)
        # 3. the items at distance <= t, counted per distance
        m = _collect(dist, t, cand, nvals)
        if m < depth:  # the guess was short: the exact threshold, and collect again
            t = _first_at(_histogram(dist, 1, nvals), depth)
            m = _collect(dist, t, cand, nvals)
        per = np.zeros(nvals, dtype=np.int64)
        for c in range(m):
            per[dist[cand[c]]] += 1
        # 4. counting sort of the candidates by distance (stable: database order within a distance)
        start = np.empty(nvals, dtype=np.int64)
        acc = 0
        for d in range(nvals):
            start[d] = acc
            acc += per[d]
        ranked[:] = 0
        for c in range(m):
            j = cand[c]
            d = dist[j]
            r = start[d]
            start[d] = r + 1
            if r < depth:
                ranked[r] = _relevant(i, j, q_class, db_class, q_lab, db_lab, multi)
        # 5. AP@K and hits@N over the ranked relevance
        hits = 0
        precision_sum = 0.0
        next_n = 0
        for r in range(depth):
            if ranked[r]:
                hits += 1
                if r < map_k:
                    precision_sum += hits / (r + 1.0)
            if r + 1 == map_k:
                ap_out[i] = precision_sum / hits if hits > 0 else 0.0
            while next_n < ns.shape[0] and ns[next_n] == r + 1:
                hits_out[i, next_n] = hits
                next_n += 1


    @njit(parallel=True, cache=True, nogil=True)
    def _scan_kernel(q_words, db_words, q_class, db_class, q_lab, db_lab, multi, nvals, map_k, ns, radius,
                     full, dist_like, chunks, ap_out, hits_out, total_out, within_out, within_rel_out, hist_out
                     ):  # pragma: no cover
        nq, n = q_words.shape[0], db_words.shape[1]
        depth = map_k
        for x in ns:
            depth = max(depth, x)
        for c in prange(chunks):  # contiguous runs of queries, a few per thread, each with its own buffers
            dist = np.empty(n, dtype=dist_like.dtype)  # uint8 up to 255 bits: a quarter of the bytes of int32
            key = np.empty(n if full else 1, dtype=np.int32)
            acc = np.empty(n if full and multi else 1, dtype=np.uint64)
            cand = np.empty(n + 1, dtype=np.int32)
            ranked = np.empty(max(depth, 1), dtype=np.uint8)
            for i in range(c * nq // chunks, (c + 1) * nq // chunks):
                _one_query(i, q_words, db_words, q_class, db_class, q_lab, db_lab, multi, nvals, map_k, ns, radius,
                           full, depth, dist, key, acc, cand, ranked, ap_out, hits_out, total_out, within_out,
                           within_rel_out, hist_out)


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Leave torch's thread count as it was. numba's OpenMP layer sets the OpenMP thread count to its own pool's
    size when it first starts its threads, and torch, sharing the one libgomp a process loads, then runs on that
    many: a user's ``torch.set_num_threads(1)`` would not survive the first mAP computed."""
    torch = sys.modules.get('torch')
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _chunks(num_queries: int) -> int:
    """Runs of queries the threads share: a few per thread, so an uneven run does not leave threads idle."""
    return max(1, min(num_queries, 8 * numba.get_num_threads()))


def popcount_sweep(q_words: np.ndarray, db_words: np.ndarray) -> None:
    """XOR + popcount of every query against every database item and nothing else (the benchmark's floor:
    what no mAP implementation can skip). Same word layout and loops as :func:`scan_queries`."""
    qw, dw = words64(q_words), words64(db_words)
    with _torch_threads_kept():
        _sweep_kernel(qw, np.ascontiguousarray(dw.T), _chunks(len(qw)), np.zeros(len(qw), dtype=np.uint8))


def scan_queries(q_words: np.ndarray, db_words: np.ndarray, relevance: Any, bits: int, *, map_k: int = 0,
                 ns: tuple = (), radius: int | None = None, full: bool = False) -> dict[str, np.ndarray]:
    """Per-query AP@``map_k``, relevant items in the top N for each N of ``ns`` (already clipped to the
    database size), and with ``full`` the relevant totals, the radius counts and the ``(bits+1, 2)``
    distance/relevance histogram. ``relevance`` is :class:`deephash_zoo.retrieval.metrics._Relevance`."""
    nq = q_words.shape[0]
    qw, dw = words64(q_words), words64(db_words)
    empty_class = np.zeros(1, dtype=np.int64)
    empty_lab = np.zeros((1, 1), dtype=np.uint64)
    if relevance.multi:
        q_class, db_class = empty_class, empty_class
        q_lab = np.ascontiguousarray(relevance.q_words, dtype=np.uint64)
        db_lab = np.ascontiguousarray(np.stack(relevance.db_words, axis=0), dtype=np.uint64)  # (words, n)
    else:
        q_class = np.ascontiguousarray(relevance.q_class, dtype=np.int64)
        db_class = np.ascontiguousarray(relevance.db_class, dtype=np.int64)
        q_lab, db_lab = empty_lab, empty_lab
    nvals = bits + 1
    order = np.argsort(np.asarray(ns, dtype=np.int64), kind='stable')
    sorted_ns = np.asarray(ns, dtype=np.int64)[order]
    out = {
        'ap': np.zeros(nq),
        'hits': np.zeros((nq, len(ns)), dtype=np.int64),
        'total': np.zeros(nq if full else 1, dtype=np.int64),
        'within': np.zeros(nq if full else 1, dtype=np.int64),
        'within_relevant': np.zeros(nq if full else 1, dtype=np.int64),
        'hist': np.zeros((nq if full else 1, nvals, 2), dtype=np.int64),
    }
    with _torch_threads_kept():
        _scan_kernel(qw, np.ascontiguousarray(dw.T), q_class, db_class, q_lab, db_lab, relevance.multi, nvals,
                     int(map_k), sorted_ns,
                     -1 if radius is None else int(radius), bool(full),
                     np.zeros(1, dtype=np.uint8 if nvals <= 256 else np.uint16), _chunks(nq), out['ap'], out['hits'],
                     out['total'], out['within'], out['within_relevant'], out['hist'])
    hits = np.empty_like(out['hits'])
    hits[:, order] = out['hits']
    out['hits'] = hits
    return out
