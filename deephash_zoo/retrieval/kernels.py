"""Compiled per-query retrieval statistics (numba, the ``fast`` extra), in parallel over queries.

The NumPy path (:mod:`.metrics`) materialises a chunk of the distance matrix, then ranks it with a sort. This
kernel does per query what the statistics need, with the database in 64-item blocks (:mod:`.simd`: codes
block-transposed, so a block's distances are one 64-byte vector):

1. **relevance bitmap**: bit j set where item j shares a label with the query: the OR of the query's labels'
   rows of a per-label bitmap (multi-hot), or 64 class compares per block (class indices). No per-item label
   look-up follows.
2. **threshold guess**: the distance ``t`` where the top ``depth`` items end, from every 32nd block with a
   3-sigma margin upwards, by bisection over the sampled keys (counted exactly, from every item, for small
   databases or when the PR curve's histogram needs every distance anyway);
3. **one sweep** over the blocks: XOR + popcount, every item's key ``2 * distance + relevant`` stored, and the
   keys of the items at distance ``< t`` appended while the block is in cache;
4. **ranks by bucket**: per distance ``d`` from the smallest, one vector compare per 64 keys finds the bucket's
   items. Items at ``t`` itself come last, in database order, from the stored keys, as many as ``depth`` leaves
   room for. Ties keep database order: the tie-break every other path uses. A guess that proves short counts
   the stored keys exactly and ranks again: no second popcount sweep;
5. AP@K and hits@N from the relevant items' ranks: no sort, no ranked buffer. Relevant totals (recall) are
   the relevance bitmap's popcount; radius counts one compare of each block's stored keys.

Gathering the keys a mask selects (steps 3 and 4) takes one ``VPCOMPRESSB`` on CPUs with AVX-512 VBMI2
(:func:`byte_compress`): appended keys, and each bucket's keys into a rank-ordered buffer whose odd keys give
the relevant ranks. Elsewhere a loop over the mask's set bits appends keys, and a relevant item's rank is
the items before its bucket plus a popcount of the bucket's earlier items. Both ways are compiled into one
kernel, chosen per call, and tested on every CPU. The per-query phases are separate compiled functions rather
than inlined into the parallel loop: the first call compiles in about a third of the time (8 s instead of 26
on Intel Xeon) at no cost in speed.

Results equal the NumPy path's, bit for bit (``tests/test_retrieval_kernels``). Codes up to 255 bits
(:data:`MAX_BITS`): the NumPy path takes longer ones.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import numpy as np

__all__ = ['available', 'byte_compress', 'compile_target', 'scan_queries', 'words64', 'aligned_zeros',
           'transpose_blocks', 'label_bitmaps', 'pack_rows', 'popcount_sweep', 'MAX_BITS',
           'SAMPLE_EVERY', 'SAMPLE_MIN_BLOCKS']

try:  # an optional dependency: without it every metric runs the NumPy path
    import numba
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    from . import simd
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

MAX_BITS = 255
"""Longest code the kernel handles (its distances are bytes); the NumPy path takes longer ones."""
SAMPLE_EVERY = 32
"""The threshold guess reads every 32nd block of 64 items (1/32 of the database)..."""
SAMPLE_MIN_BLOCKS = 16 * SAMPLE_EVERY
"""...in databases of at least this many blocks; smaller ones count every distance."""

_ONE = np.uint64(1)


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


def aligned_zeros(shape: int | tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """Zeros whose first element sits on an ``align``-byte boundary. The kernel loads and stores 64-byte
    vectors: from an array that starts mid-line (NumPy's large arrays often start 16 or 32 bytes past one)
    each of them splits two cache lines, and the popcount sweep took 25-27 ms instead of 17-18 here."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape))
    raw = np.zeros(size * dtype.itemsize + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size * dtype.itemsize].view(dtype).reshape(shape)


def transpose_blocks(words: np.ndarray) -> np.ndarray:
    """``(n, w)`` uint64 code words as ``(w, 64 * blocks)``, word-major, zero-padded to whole blocks of 64 items,
    each block transposed: position ``8k + l`` holds item ``8l + k`` (the layout :mod:`.simd` packs from),
    each block on a 64-byte boundary."""
    n, w = words.shape
    blocks = -(-n // 64)
    padded = np.zeros((w, blocks * 64), dtype=np.uint64)
    padded[:, :n] = words.T
    out = aligned_zeros((w, blocks * 64), np.uint64)
    out[...] = padded.reshape(w, blocks, 8, 8).transpose(0, 1, 3, 2).reshape(w, blocks * 64)
    return out


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
        """LLVM's cttz on a uint64 (TZCNT): the index of the lowest set bit, 64 for zero."""
        sig = types.uint64(types.uint64)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
        return sig, codegen

    @njit(inline='always')
    def _first_at(counts: np.ndarray, need: float) -> int:
        """The smallest distance whose cumulative count reaches ``need`` (the last one if none does)."""
        acc = 0
        for d in range(counts.shape[0]):
            acc += counts[d]
            if acc >= need:
                return d
        return counts.shape[0] - 1

    @njit(nogil=True)
    def _relevance_bitmap(i, q_class, db_class, q_lab, bitmaps, multi, rel):  # pragma: no cover
        """rel[b] bit k: item 64b + k shares a label with query i (padding items: whatever, masked later)."""
        blocks = rel.shape[0]
        if multi:
            rel[:] = 0
            for w in range(q_lab.shape[1]):
                x = q_lab[i, w]
                while x != 0:
                    row = bitmaps[64 * w + np.int64(_trailing_zeros(x))]
                    for b in range(blocks):
                        rel[b] |= row[b]
                    x &= x - _ONE
            return
        c = q_class[i]
        for b in range(blocks):
            rel[b] = simd.block_equal(db_class, np.int64(b * 64), c)

    @njit(nogil=True)
    def _key_counts(kb, n, nvals):  # pragma: no cover
        """(nvals, 2) counts by (distance, relevant) of the n stored keys, in four interleaved histograms so
        repeated keys do not serialise on one counter."""
        h = np.zeros((4, 2 * nvals), dtype=np.int64)
        for k in range(0, n // 4 * 4, 4):
            for u in range(4):
                h[u, kb[k + u]] += 1
        for j in range(n // 4 * 4, n):
            h[0, kb[j]] += 1
        out = np.zeros((nvals, 2), dtype=np.int64)
        for u in range(4):
            for d in range(nvals):
                out[d, 0] += h[u, 2 * d]
                out[d, 1] += h[u, 2 * d + 1]
        return out

    @njit(nogil=True)
    def _guess_threshold(q, db, n, depth, nvals, rel, kb):  # pragma: no cover
        """The distance where the top ``depth`` items end, estimated from every SAMPLE_EVERY-th whole block
        with a 3-sigma margin upwards (a short guess is caught after the ranking): the smallest ``d`` whose
        sampled items at distance ``<= d`` reach the margin, by bisection with one vector compare a block."""
        for b in range(0, n // 64, SAMPLE_EVERY):
            simd.block_store_keys(db, q, np.int64(b * 64), rel[b], kb)
        expected = depth * ((n // 64 + SAMPLE_EVERY - 1) // SAMPLE_EVERY * 64) / n
        need = expected + 3.0 * np.sqrt(expected) + 1.0
        lo = 0
        hi = nvals - 1  # if no distance reaches the margin: the largest
        while lo < hi:
            mid = (lo + hi) // 2
            count = 0
            for b in range(0, n // 64, SAMPLE_EVERY):
                count += np.int64(_popcount(simd.stored_below(kb, np.int64(b * 64), np.int64(2 * mid + 2))))
            if count >= need:
                hi = mid
            else:
                lo = mid + 1
        return lo

    @njit(inline='always')
    def _compress(src, offset, mask, dst, at, vector, unrolled):  # pragma: no cover
        """dst[at:] = src[offset + i] for each set bit i of ``mask``, in order; returns the new length. With
        ``vector`` one compress instruction (:func:`simd.compress_store`); without, a loop over the set bits,
        the first ``unrolled`` unconditionally (a mask holds a few: no loop exit to mispredict)."""
        count = np.int64(_popcount(mask))
        if vector:
            simd.compress_store(src, offset, mask, dst, at)
            return at + count
        for u in range(unrolled):
            dst[at + u] = src[offset + np.int64(_trailing_zeros(mask) & np.uint64(63))]
            mask &= mask - _ONE
        for u in range(unrolled, count):
            dst[at + u] = src[offset + np.int64(_trailing_zeros(mask))]
            mask &= mask - _ONE
        return at + count

    @njit(nogil=True)
    def _sweep_keys(q, db, t, last, rel, kb, keys, vector):  # pragma: no cover
        """The one popcount sweep: every item's key into ``kb``, and the keys of the items at distance ``< t``
        appended to ``keys`` while the block is in cache. Returns how many."""
        blocks = rel.shape[0]
        m = 0
        bound = np.int64(2 * t)
        if vector:  # two loops, so that neither tests the choice per block
            for b in range(blocks - 1):
                base = np.int64(b * 64)
                below = simd.block_keys(db, q, base, rel[b], bound, kb)
                m = _compress(kb, base, below, keys, m, True, 0)
        else:
            for b in range(blocks - 1):
                base = np.int64(b * 64)
                below = simd.block_keys(db, q, base, rel[b], bound, kb)
                m = _compress(kb, base, below, keys, m, False, 6)
        base = np.int64((blocks - 1) * 64)  # the last block, whose padding items are masked out
        below = simd.block_keys(db, q, base, rel[blocks - 1], bound, kb) & last
        return _compress(kb, base, below, keys, m, vector, 6)

    @njit(nogil=True)
    def _stored_keys(kb, blocks, t, last, keys, vector):  # pragma: no cover
        """The same from keys already stored."""
        m = 0
        for b in range(blocks):
            base = np.int64(b * 64)
            below = simd.stored_below(kb, base, np.int64(2 * t))
            if b == blocks - 1:
                below &= last
            m = _compress(kb, base, below, keys, m, vector, 6)
        return m

    @njit(inline='always')
    def _append_ranks(ranks, r, relevant, among, base, unrolled):  # pragma: no cover
        """ranks[r:] = the rank of each set bit of ``relevant``: ``base`` plus the bits of ``among`` below it.
        The first ``unrolled`` unconditionally, the rest in a loop. Returns the new length."""
        count = np.int64(_popcount(relevant))
        for u in range(unrolled):
            below = (_ONE << (_trailing_zeros(relevant) & np.uint64(63))) - _ONE
            ranks[r + u] = base + np.int64(_popcount(among & below))
            relevant &= relevant - _ONE
        for u in range(unrolled, count):
            below = (_ONE << _trailing_zeros(relevant)) - _ONE
            ranks[r + u] = base + np.int64(_popcount(among & below))
            relevant &= relevant - _ONE
        return r + count

    @njit(inline='always')
    def _rank_chunk(src, offset, d, valid, ranked, found, ordered, ranks, vector, unrolled):  # pragma: no cover
        """Rank the items at distance ``d`` among the 64 keys from ``offset`` (and in ``valid``), after the
        ``ranked`` before them: with ``vector`` their keys are compressed into ``ordered[ranked:]`` (rank
        order; :func:`_ranks_from_order` reads the relevant ranks later), without it the relevant ones' ranks
        go straight to ``ranks[found:]``. Returns the new ``ranked`` and ``found``."""
        at_d, relevant = simd.key_masks(src, offset, d)
        at_d &= valid
        if vector:
            return _compress(src, offset, at_d, ordered, ranked, True, 0), found
        found = _append_ranks(ranks, found, relevant & valid, at_d, ranked, unrolled)
        return ranked + np.int64(_popcount(at_d)), found

    @njit(inline='always')
    def _ranks_from_order(ordered, ranked, depth, ranks):  # pragma: no cover
        """ranks[:found] = the ranks (< depth) of the relevant items among the keys in rank order."""
        limit = min(ranked, depth)
        found = 0
        for o in range(0, limit, 64):
            x = simd.relevant_mask(ordered, np.int64(o))
            if o + 64 > limit:
                x &= (_ONE << np.uint64(limit - o)) - _ONE
            while x != 0:
                ranks[found] = o + np.int64(_trailing_zeros(x))
                found += 1
                x &= x - _ONE
        return found

    @njit(nogil=True)
    def _relevant_ranks(keys, m, t, kb, blocks, last, nvals, depth, ordered, ranks, vector):  # pragma: no cover
        """ranks[:found] = the ranks of the relevant items, ascending, from the keys (items at distance < t)
        and the items at distance t. Returns ``found`` and whether the ranks reached ``depth`` (a threshold
        guessed short does not)."""
        padded = (m + 63) // 64 * 64
        keys[m:padded] = 2 * nvals - 1  # the largest key: distance nvals - 1 >= t, which no bucket reaches
        smallest = 1 << 30
        for o in range(0, padded, 64):
            smallest = min(smallest, np.int64(simd.chunk_min(keys, np.int64(o))))
        every = ~np.uint64(0)
        found = 0
        ranked = 0
        for d in range(smallest >> 1, t):  # bucket by bucket; database order within one
            if ranked >= depth:
                break
            for o in range(0, padded, 64):
                ranked, found = _rank_chunk(keys, np.int64(o), np.int64(d), every, ranked, found, ordered, ranks,
                                            vector, 4)
        for b in range(blocks):  # distance t last: database order is rank order
            if ranked >= depth:
                break
            ranked, found = _rank_chunk(kb, np.int64(b * 64), np.int64(t), last if b == blocks - 1 else every,
                                        ranked, found, ordered, ranks, vector, 2)
        if vector:
            found = _ranks_from_order(ordered, ranked, depth, ranks)
        return found, ranked >= depth

    @njit(nogil=True)
    def _statistics(i, ranks, found, map_k, ns, inv, ap_out, hits_out):  # pragma: no cover
        """AP@map_k and hits@N from the relevant items' ascending ranks. AP adds ``hits * (1 / rank)`` in the
        order the NumPy path does, so both give the same bits."""
        hits_k = 0
        precision_sum = 0.0
        for h in range(found):
            r = ranks[h]
            if r >= map_k:
                break
            precision_sum += (h + 1) * inv[r]
            hits_k = h + 1
        if map_k > 0:
            ap_out[i] = precision_sum / hits_k if hits_k > 0 else 0.0
        h = 0
        for k in range(ns.shape[0]):
            while h < found and ranks[h] < ns[k]:
                h += 1
            hits_out[i, k] = h

    @njit(inline='always')
    def _relevant_total(rel, last):  # pragma: no cover
        """The query's relevant items: the popcount of its relevance bitmap (the last block's padding out)."""
        blocks = rel.shape[0]
        total = 0
        for b in range(blocks - 1):
            total += np.int64(_popcount(rel[b]))
        return total + np.int64(_popcount(rel[blocks - 1] & last))

    @njit(nogil=True)
    def _within_radius(kb, rel, last, radius, nvals):  # pragma: no cover
        """Items at distance <= radius, and the relevant ones among them, from the stored keys: one vector
        compare a block."""
        blocks = rel.shape[0]
        inside = 0
        inside_rel = 0
        if radius >= nvals - 1:  # every item (and 2 * radius + 2 might not fit a key)
            for b in range(blocks):
                inside += 64 if b < blocks - 1 else np.int64(_popcount(last))
            return inside, _relevant_total(rel, last)
        for b in range(blocks):
            below = simd.stored_below(kb, np.int64(b * 64), np.int64(2 * radius + 2))
            if b == blocks - 1:
                below &= last
            inside += np.int64(_popcount(below))
            inside_rel += np.int64(_popcount(below & rel[b]))
        return inside, inside_rel

    @njit(nogil=True)
    def _one_query(i, q_words, db, n, last, q_class, db_class, q_lab, bitmaps, multi, nvals, map_k, ns, radius,
                   totals, hist, depth, inv, vector, kb, rel, keys, ordered, ranks, ap_out, hits_out, total_out,
                   within_out, within_rel_out, hist_out):  # pragma: no cover
        """Query i's statistics, in buffers its thread allocated once (fresh half-megabyte buffers per query
        cost page faults that took longer than the popcounts). Only the (distance, relevance) histogram needs
        every stored key counted; totals come from the relevance bitmap, radius counts from a compare a block."""
        q = q_words[i]
        blocks = rel.shape[0]
        if depth == 0 and not hist and not totals and radius < 0:
            return
        _relevance_bitmap(i, q_class, db_class, q_lab, bitmaps, multi, rel)
        if totals:
            total_out[i] = _relevant_total(rel, last)
        if depth > 0 and not hist and blocks >= SAMPLE_MIN_BLOCKS:  # the guessed threshold's one sweep
            t = _guess_threshold(q, db, n, depth, nvals, rel, kb)
            m = _sweep_keys(q, db, t, last, rel, kb, keys, vector)
            found, reached = _relevant_ranks(keys, m, t, kb, blocks, last, nvals, depth, ordered, ranks, vector)
            if not reached:  # the guess was short: count the stored keys exactly
                counts = _key_counts(kb, n, nvals)
                t = _first_at(counts[:, 0] + counts[:, 1], depth)
                m = _stored_keys(kb, blocks, t, last, keys, vector)
                found, _ = _relevant_ranks(keys, m, t, kb, blocks, last, nvals, depth, ordered, ranks, vector)
        elif depth > 0 or hist or radius >= 0:  # every distance stored, counted where needed
            for b in range(blocks):
                simd.block_store_keys(db, q, np.int64(b * 64), rel[b], kb)
            if depth > 0 or hist:
                counts = _key_counts(kb, n, nvals)
                if hist:
                    hist_out[i] = counts
                if depth > 0:
                    t = _first_at(counts[:, 0] + counts[:, 1], depth)
                    m = _stored_keys(kb, blocks, t, last, keys, vector)
                    found, _ = _relevant_ranks(keys, m, t, kb, blocks, last, nvals, depth, ordered, ranks, vector)
        if radius >= 0:
            within_out[i], within_rel_out[i] = _within_radius(kb, rel, last, radius, nvals)
        if depth > 0:
            _statistics(i, ranks, found, map_k, ns, inv, ap_out, hits_out)

    @njit(inline='always')
    def _aligned_empty(size, like):  # pragma: no cover
        """An empty 1-d array of ``like``'s dtype starting on a 64-byte boundary (see :func:`aligned_zeros`)."""
        raw = np.empty(size + 64, dtype=like.dtype)
        start = (-raw.ctypes.data % 64) // raw.itemsize
        return raw[start:start + size]

    @njit(parallel=True, cache=True, nogil=True)
    def _scan_kernel(q_words, db, n, q_class, db_class, q_lab, bitmaps, multi, nvals, map_k, ns, radius, totals,
                     hist, key_like, chunks, vector, ap_out, hits_out, total_out, within_out, within_rel_out,
                     hist_out):  # pragma: no cover
        nq = q_words.shape[0]
        blocks = db.shape[1] // 64
        last = ~np.uint64(0) if n % 64 == 0 else (_ONE << np.uint64(n % 64)) - _ONE
        depth = map_k
        for x in ns:
            depth = max(depth, x)
        inv = np.empty(max(depth, 1))  # 1 / rank, looked up rather than divided per relevant item
        for r in range(depth):
            inv[r] = 1.0 / (r + 1.0)
        for c in prange(chunks):  # contiguous runs of queries, a few per thread, each with its own buffers
            kb = _aligned_empty(blocks * 64 + 64, key_like)  # every item's key 2 * distance + relevant
            rel = np.empty(blocks, dtype=np.uint64)
            keys = _aligned_empty(blocks * 64 + 128, key_like)  # those at distance < t, database order
            ordered = _aligned_empty(blocks * 64 + 128, key_like)  # with those at t, in rank order
            ranks = np.empty(blocks * 64 + 128, dtype=np.int32)  # the relevant items' ranks
            for i in range(c * nq // chunks, (c + 1) * nq // chunks):
                _one_query(i, q_words, db, n, last, q_class, db_class, q_lab, bitmaps, multi, nvals, map_k, ns,
                           radius, totals, hist, depth, inv, vector, kb, rel, keys, ordered, ranks, ap_out, hits_out,
                           total_out, within_out, within_rel_out, hist_out)

    @njit(parallel=True, cache=True, nogil=True)
    def _sweep_kernel(q_words, db, chunks, out):  # pragma: no cover
        """Only the compulsory work: every query's XOR + popcount against every item, summed."""
        nq = q_words.shape[0]
        for c in prange(chunks):
            for i in range(c * nq // chunks, (c + 1) * nq // chunks):
                out[i] = simd.sweep_popcount_sum(db, q_words[i])

    @njit(parallel=True, cache=True, nogil=True)
    def _bitmaps_kernel(label_words, out):  # pragma: no cover
        """out[64w + p, b] bit k: item 64b + k has the label at bit p of label word w. In parallel over blocks
        of 64 items: each writes its own column."""
        n, lw = label_words.shape
        for b in prange(out.shape[1]):
            for j in range(b * 64, min(n, b * 64 + 64)):
                for w in range(lw):
                    x = label_words[j, w]
                    while x != 0:
                        out[64 * w + np.int64(_trailing_zeros(x)), b] |= _ONE << np.uint64(j & 63)
                        x &= x - _ONE

    @njit(inline='always')
    def _pack_byte(arr, i, start, count, signs):  # pragma: no cover
        """Elements ``start .. start+count`` of row i as one ``numpy.packbits`` byte (first element in the high
        bit), and whether each is valid: -1 or +1 for sign codes, 0 or 1 for multi-hot labels."""
        v = np.uint8(0)
        ok = True
        for k in range(count):
            x = arr[i, start + k]
            if signs:
                ok &= (x == 1) | (x == -1)
                v |= np.uint8(x > 0) << np.uint8(7 - k)
            else:
                ok &= (x == 0) | (x == 1)
                v |= np.uint8(x != 0) << np.uint8(7 - k)
        return v, ok

    @njit(parallel=True, cache=True, nogil=True)
    def _pack_flat_kernel(flat, signs, out, bad):  # pragma: no cover
        """out = numpy.packbits of ``flat`` (bit: > 0 with ``signs``, else != 0), whose length is a multiple of 8:
        64 values per vector compare (:func:`simd.pack64`), the rest a byte at a time; bad[c]: chunk c held an
        invalid value."""
        groups = flat.shape[0] // 64
        chunks = bad.shape[0]
        for c in prange(chunks):
            ok = True
            for g in range(c * groups // chunks, (c + 1) * groups // chunks):
                ok &= simd.pack64(flat, np.int64(g * 64), out, np.int64(g * 8), signs)
            bad[c] = not ok
        ok = True
        for byte in range(groups * 8, flat.shape[0] // 8):
            out[byte], good = _pack_byte(flat.reshape((1, flat.shape[0])), 0, 8 * byte, 8, signs)
            ok &= good
        if not ok:
            bad[0] = True

    @njit(parallel=True, cache=True, nogil=True)
    def _pack_rows_kernel(arr, signs, out, bad):  # pragma: no cover
        """out = numpy.packbits(arr > 0 (signs) or arr != 0, axis=1); bad[c]: chunk c held an invalid value."""
        n, m = arr.shape
        full = m // 8
        chunks = bad.shape[0]
        for c in prange(chunks):
            ok = True
            for i in range(c * n // chunks, (c + 1) * n // chunks):
                for byte in range(full):
                    out[i, byte], good = _pack_byte(arr, i, 8 * byte, 8, signs)
                    ok &= good
                if full * 8 < m:
                    out[i, full], good = _pack_byte(arr, i, 8 * full, m - 8 * full, signs)
                    ok &= good
            bad[c] = not ok


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


def _check_bits(bits: int) -> None:
    if bits > MAX_BITS:
        raise ValueError(f"the compiled kernel handles codes of up to {MAX_BITS} bits, got {bits}; "
                         "use backend='numpy' (backend='auto' does)")


def popcount_sweep(q_words: np.ndarray, db_words: np.ndarray) -> np.ndarray:
    """XOR + popcount of every query against every database item and nothing else (the benchmark's floor:
    what no mAP implementation can skip), in the kernel's vector blocks. Returns each query's distance sum."""
    qw = words64(q_words)
    out = np.zeros(len(qw), dtype=np.uint64)
    with _torch_threads_kept():
        _sweep_kernel(qw, transpose_blocks(words64(db_words)), _chunks(len(qw)), out)
    return out


def label_bitmaps(db_label_words: np.ndarray) -> np.ndarray:
    """``(n, w)`` uint64 multi-hot label words as ``(64 w, blocks)`` bitmaps: row ``64 w + p`` marks the items
    with the label at bit p of word w. A query's relevant items are the OR of its labels' rows."""
    n, lw = db_label_words.shape
    out = np.zeros((64 * lw, max(1, -(-n // 64))), dtype=np.uint64)
    with _torch_threads_kept():
        _bitmaps_kernel(np.ascontiguousarray(db_label_words, dtype=np.uint64), out)
    return out


_PACKABLE = frozenset(np.dtype(t) for t in ('int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                                            'uint64', 'float32', 'float64', 'bool'))


def pack_rows(arr: np.ndarray, signs: bool, width: int | None = None) -> tuple[np.ndarray, bool] | None:
    """``numpy.packbits(arr > 0 if signs else arr != 0, axis=1)`` and whether every value was valid (sign
    codes: -1 or +1; multi-hot labels: 0 or 1), in one parallel pass instead of NumPy's three to five: one
    vector compare per 64 values where rows are whole bytes (0.16 ms instead of 3.4 for 117,218 x 64 int8 sign
    codes on 2-core Intel Xeon), a byte at a time otherwise. None where it does not apply (numba absent,
    another dtype): the caller takes the NumPy path, which also names a bad value when this reports one.
    Callers use it for large arrays only (:func:`deephash_zoo.retrieval.codes.compiled_pack`). ``width``:
    bytes per output row, zero-padded beyond the packed ones (label words: a whole number of 64-bit words)."""
    if not available() or arr.ndim != 2 or arr.dtype not in _PACKABLE:
        return None
    n, m = arr.shape
    nbytes = -(-m // 8)
    bad = np.zeros(_chunks(n), dtype=np.bool_)
    with _torch_threads_kept():
        if m % 8 == 0:  # rows of whole bytes: packbits of the rows is packbits of the flat array
            packed = np.empty(n * nbytes, dtype=np.uint8)
            _pack_flat_kernel(np.ascontiguousarray(arr).reshape(-1), bool(signs), packed, bad)
            packed = packed.reshape(n, nbytes)
        else:
            packed = np.empty((n, nbytes), dtype=np.uint8)
            _pack_rows_kernel(np.ascontiguousarray(arr), bool(signs), packed, bad)
    if width is None or width == nbytes:
        return packed, not bad.any()
    out = np.zeros((n, width), dtype=np.uint8)
    out[:, :nbytes] = packed
    return out, not bad.any()


def byte_compress() -> bool:
    """Whether the CPU numba compiles for compresses 64 bytes by a mask in one instruction (AVX-512 VBMI2's
    ``VPCOMPRESSB``): the kernel then gathers keys with it, and with a loop over the mask's bits elsewhere."""
    return '+avx512vbmi2' in simd.target_features()


def compile_target() -> dict[str, Any]:
    """What numba compiles the kernel for (``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` where set, else this
    CPU) and which of the kernel's CPU-specific paths that takes: a benchmark records it beside its figures."""
    import llvmlite.binding as llvm
    from numba.core import config

    features = simd.target_features()
    return {'cpu_name': config.CPU_NAME or llvm.get_host_cpu_name(), 'avx512bw': '+avx512bw' in features,
            'vector_popcount': '+avx512vpopcntdq' in features, 'byte_compress': byte_compress()}


def scan_queries(q_words: np.ndarray, db_words: np.ndarray, relevance: Any, bits: int, *, map_k: int = 0,
                 ns: tuple = (), radius: int | None = None, totals: bool = False, hist: bool = False,
                 vector: bool | None = None) -> dict[str, np.ndarray]:
    """Per-query AP@``map_k``, relevant items in the top N for each N of ``ns`` (already clipped to the
    database size), the relevant totals (``totals``), the items and relevant items within ``radius``, and the
    ``(bits+1, 2)`` distance/relevance histogram (``hist``). ``relevance`` is
    :class:`deephash_zoo.retrieval.metrics._Relevance`. ``vector``: gather keys with the vector compress
    (default: where :func:`byte_compress`); both ways give the same results."""
    _check_bits(bits)
    nq, n = q_words.shape[0], db_words.shape[0]
    nvals = bits + 1
    out = {
        'ap': np.zeros(nq),
        'hits': np.zeros((nq, len(ns)), dtype=np.int64),
        'total': np.zeros(nq if totals else 1, dtype=np.int64),
        'within': np.zeros(nq if radius is not None else 1, dtype=np.int64),
        'within_relevant': np.zeros(nq if radius is not None else 1, dtype=np.int64),
        'hist': np.zeros((nq if hist else 1, nvals, 2), dtype=np.int64),
    }
    if nq == 0 or n == 0:
        return out
    qw = words64(q_words)
    db = transpose_blocks(words64(db_words))
    blocks = db.shape[1] // 64
    # one argument type per role whatever the labels, so single- and multi-label share the compiled kernel
    if relevance.multi:
        q_class = db_class = np.zeros(64, dtype=np.int32)
        q_lab = np.ascontiguousarray(relevance.q_words, dtype=np.uint64)
        bitmaps = label_bitmaps(relevance.db_word_rows)
    else:  # class indices (below queries + items: int32), whole blocks for the vector compare
        q_class = np.ascontiguousarray(relevance.q_class, dtype=np.int32)
        db_class = aligned_zeros(blocks * 64, np.int32)
        db_class[:n] = relevance.db_class
        q_lab = np.zeros((1, 1), dtype=np.uint64)
        bitmaps = np.zeros((1, 1), dtype=np.uint64)
    order = np.argsort(np.asarray(ns, dtype=np.int64), kind='stable')
    sorted_ns = np.asarray(ns, dtype=np.int64)[order]
    key_like = np.zeros(1, dtype=np.uint8 if 2 * nvals <= 256 else np.uint16)  # keys 2 * distance + relevant
    with _torch_threads_kept():
        _scan_kernel(qw, db, n, q_class, db_class, q_lab, bitmaps, relevance.multi, nvals, int(map_k), sorted_ns,
                     -1 if radius is None else int(radius), bool(totals), bool(hist), key_like, _chunks(nq),
                     byte_compress() if vector is None else bool(vector), out['ap'],
                     out['hits'], out['total'], out['within'], out['within_relevant'], out['hist'])
    hits = np.empty_like(out['hits'])
    hits[:, order] = out['hits']
    out['hits'] = hits
    return out
