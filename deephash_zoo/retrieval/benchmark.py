"""Benchmarks (commands, not tests): ``python -m deephash_zoo.retrieval.benchmark {map,index} ...``.

``map``   times our mAP@K (the compiled kernel of the ``fast`` extra and the NumPy path) against the
          literature's straightforward per-query implementation on random COCO-sized data with many Hamming
          ties, checks they give the same number, times the tie-aware mAP beside it, and prints the
          physical floor: the XOR + popcount of every query-item pair at this machine's measured rate, and
          the bytes read at its measured memory rate.
``index`` times exact vs sub-linear FAISS binary indexes and measures the latter's recall@k.
``folder`` indexes a folder of image files (``HashIndex.from_images``) in a fresh process and reports its
          peak memory beyond the loaded model, and the time per image.

Each prints a table and writes a JSON record (sizes, timings, machine) for later comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deephash_zoo.utils import cpu_model, provenance, usable_cores, write_atomic

from . import kernels
from .codes import code_words, distance_dtype, hamming_distances, hamming_from_words
from .metrics import (
    TIE_BREAK,
    _rank_topk,
    hamming_radius_precision_recall,
    mean_average_precision,
    precision_recall_at_n,
    tie_aware_mean_average_precision,
)


# ------------------------------------------------------------------------------------------------ data
def random_labels(rng: np.random.Generator, n: int, num_labels: int, max_per_item: int = 5) -> np.ndarray:
    """Multi-hot labels with 1..max_per_item labels per item (about 3 on average for 5)."""
    per_item = rng.integers(1, max_per_item + 1, size=n)
    picks = np.argsort(rng.random((n, num_labels)), axis=1)[:, :max_per_item]
    labels = np.zeros((n, num_labels), dtype=np.uint8)
    keep = np.arange(max_per_item)[None, :] < per_item[:, None]
    labels[np.repeat(np.arange(n), per_item), picks[keep]] = 1
    return labels


def structured_codes(rng: np.random.Generator, labels: np.ndarray, prototypes: np.ndarray, flip: float) -> np.ndarray:
    """Sign codes near the sign of the sum of each item's label prototypes, with random bit flips.

    Items with similar label sets get similar codes, so distances bunch up and ties are everywhere.
    """
    s = labels.astype(np.float32) @ prototypes + rng.uniform(-0.5, 0.5, size=(len(labels), prototypes.shape[1]))
    codes = np.where(s > 0, 1, -1).astype(np.int8)
    codes[rng.random(codes.shape) < flip] *= -1
    return codes


def reference_map(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                  topk: int) -> float:
    """DPSH / HashNet ``calc_map`` as published (per query, vectorised), with a stable argsort."""
    q_b = q_codes.astype(np.float32)
    r_b = db_codes.astype(np.float32)
    q_l = q_labels.astype(np.float32)
    r_l = db_labels.astype(np.float32)
    bits = q_b.shape[1]
    topkmap = 0.0
    for i in range(q_b.shape[0]):
        gnd = (q_l[i, :] @ r_l.T > 0).astype(np.float32)
        hamm = 0.5 * (bits - q_b[i, :] @ r_b.T)
        ind = np.argsort(hamm, kind='stable')
        tgnd = gnd[ind][:topk]
        tsum = int(np.sum(tgnd))
        if tsum == 0:
            continue
        count = np.linspace(1, tsum, tsum)
        tindex = np.asarray(np.where(tgnd == 1)).ravel() + 1.0
        topkmap += float(np.mean(count / tindex))
    return topkmap / q_b.shape[0]


def _reference_rows(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                    db_labels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per query, as the literature's loops do it: relevance from a label product, Hamming distances from a
    code product."""
    q_b, r_b = q_codes.astype(np.float32), db_codes.astype(np.float32)
    q_l, r_l = q_labels.astype(np.float32), db_labels.astype(np.float32)
    for i in range(q_b.shape[0]):
        yield q_l[i, :] @ r_l.T > 0, 0.5 * (q_b.shape[1] - q_b[i, :] @ r_b.T)


def reference_precision_at_n(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                             db_labels: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Mean P@N for each N, per query with a stable argsort (the literature's P@N loop)."""
    total = np.zeros(len(ns))
    for gnd, hamm in _reference_rows(q_codes, db_codes, q_labels, db_labels):
        ranked = gnd[np.argsort(hamm, kind='stable')]
        total += [ranked[:n].sum() / n for n in ns]
    return total / q_codes.shape[0]


def reference_radius(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                     radius: int) -> tuple[float, float]:
    """Mean precision and recall of the items within Hamming distance ``radius`` (empty: 0), per query."""
    precision = recall = 0.0
    for gnd, hamm in _reference_rows(q_codes, db_codes, q_labels, db_labels):
        inside = hamm <= radius
        hits = np.count_nonzero(gnd & inside)
        precision += hits / max(np.count_nonzero(inside), 1)
        recall += hits / max(np.count_nonzero(gnd), 1)
    return precision / q_codes.shape[0], recall / q_codes.shape[0]


def numpy_topk(q: np.ndarray, db: np.ndarray, k: int, bits: int, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k by (Hamming distance, database index) with this package's own ranking code."""
    qw, dbw, dt = code_words(q), code_words(db), distance_dtype(q.shape[1])
    ids = np.empty((len(q), k), dtype=np.int64)
    dist = np.empty((len(q), k), dtype=np.int32)
    for s in range(0, len(q), chunk):
        d = hamming_from_words(qw[s:s + chunk], dbw, dt)
        ids[s:s + chunk] = _rank_topk(d, k, bits)
        dist[s:s + chunk] = np.take_along_axis(d, ids[s:s + chunk], axis=1)
    return ids, dist


# --------------------------------------------------------------------------------------------- helpers
def machine_info() -> dict[str, Any]:
    return {
        'cpu': cpu_model(),
        'cores': os.cpu_count(),
        'usable_cores': usable_cores(),
        'loadavg_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
        'python': platform.python_version(),
        'numpy': np.__version__,
    }


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == 'darwin' else rss * 1024)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, list[float]]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def timed_alternately(fns: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[Any], list[list[float]]]:
    """Each function once per round, in turn, for ``repeats`` rounds: on a shared machine whose speed drifts
    from minute to minute, the ratio of two medians taken this way moves far less than one of runs taken apart.
    Returns each function's last result and its times."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list[Any] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return outs, times


def print_table(rows: Sequence[tuple[str, str]], title: str) -> None:
    width = max(len(k) for k, _ in rows)
    print(title)
    print('-' * (width + 2 + max(len(v) for _, v in rows)))
    for k, v in rows:
        print(f'{k:<{width}}  {v}')


def write_json(record: dict[str, Any], args: argparse.Namespace) -> Path:
    """The record with when and how it was made, written whole (a temporary file renamed) to ``args.out``."""
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps({**getattr(args, 'provenance', {}), **record}, indent=2) + '\n').encode())
    return path


# ------------------------------------------------------------------------------------------------- map
def measure_floor(q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray,
                  sample_queries: int | None = None, repeats: int = 3,
                  alongside: Callable[[], Any] | None = None) -> tuple[dict[str, Any], Any, list[float]]:
    """What no mAP implementation can avoid, at this machine's measured rates: one XOR + popcount per
    (query, item, 64-bit word), and reading the codes and labels once from memory.

    The popcount rate is that of :func:`kernels.popcount_sweep` (the kernel's own 64-item vector blocks, XOR +
    popcount summed into a vector register and nothing else, every thread) on ``sample_queries`` queries
    (default: all), the median of ``repeats`` runs; ``alongside`` (ours) runs in turn with each of them, so
    that both medians come from the same minutes (:func:`timed_alternately`): its last result and its times
    are returned beside the floor. The memory rate is that of a 256 MiB copy (bytes read + written per
    second). Without numba the popcount rate is NumPy's ``bitwise_count`` sweep's.
    """
    from .codes import as_packed

    qp, bits = as_packed(q_codes)
    dp, _ = as_packed(db_codes, bits)
    words = -(-qp.shape[1] // 8)
    sub = qp[:sample_queries]
    if kernels.available():
        kernels.popcount_sweep(sub[:2], dp)
        sweep = lambda: kernels.popcount_sweep(sub, dp)  # noqa: E731
    else:
        sweep = lambda: hamming_distances(sub, dp)  # noqa: E731
    fns = [sweep] if alongside is None else [sweep, alongside]
    outs, times = timed_alternately(fns, repeats)
    rate = len(sub) * len(dp) * words / statistics.median(times[0])
    src = np.ones(32 << 20, dtype=np.float64)
    dst = np.empty_like(src)
    _, mt = timed(lambda: np.copyto(dst, src), 3)
    mem_rate = 2 * src.nbytes / min(mt)
    popcounts = len(qp) * len(dp) * words
    nbytes = qp.nbytes + dp.nbytes + np.asarray(q_labels).nbytes // 8 + np.asarray(db_labels).nbytes // 8
    pop_s, mem_s = popcounts / rate, nbytes / mem_rate
    floor = {'popcounts': popcounts, 'popcount_rate_per_s': rate, 'popcount_seconds': pop_s,
             'bytes_read': nbytes, 'memory_rate_bytes_per_s': mem_rate, 'memory_seconds': mem_s,
             'seconds': max(pop_s, mem_s), 'seconds_all': times[0],
             'threads': kernels.numba.get_num_threads() if kernels.available() else 1,
             'sample_queries': len(sub), 'repeats': repeats, 'statistic': 'median',
             'timed_in_turn_with_ours': alongside is not None,
             'kernel': 'numba' if kernels.available() else 'numpy'}
    return floor, (outs[1] if alongside is not None else None), (times[1] if alongside is not None else [])


def other_metrics(args: argparse.Namespace, q_codes: np.ndarray, db_codes: np.ndarray, q_labels: np.ndarray,
                  db_labels: np.ndarray, nsub: int) -> dict[str, dict[str, Any]]:
    """P@100 and P@1000 (with their recall), and precision and recall within Hamming radius 2: ours on every
    query (median of ``--repeats``) against the literature's per-query loop on ``nsub`` of them, extrapolated,
    and equal there."""
    ns = (100, 1000)

    def radius(q: np.ndarray, ql: np.ndarray) -> np.ndarray:
        r = hamming_radius_precision_recall(q, db_codes, ql, db_labels, 2)
        return np.array([r.precision, r.recall])

    runs = {
        'P@100, P@1000': (lambda q, ql: precision_recall_at_n(q, db_codes, ql, db_labels, ns=ns).precision,
                          lambda q, ql: reference_precision_at_n(q, db_codes, ql, db_labels, ns)),
        'precision, recall (r <= 2)': (radius, lambda q, ql: np.array(reference_radius(q, db_codes, ql, db_labels, 2))),
    }
    out = {}
    for name, (ours, reference) in runs.items():
        ours(q_codes[:2], q_labels[:2])  # compiled outside the timing
        _, times = timed(lambda ours=ours: ours(q_codes, q_labels), args.repeats)
        mine = ours(q_codes[:nsub], q_labels[:nsub])
        t0 = time.perf_counter()
        ref = reference(q_codes[:nsub], q_labels[:nsub])
        ref_s = time.perf_counter() - t0
        diff = float(np.max(np.abs(mine - ref)))
        seconds = statistics.median(times)
        out[name] = {'seconds_median': seconds, 'seconds_all': times, 'reference_per_query_ms': ref_s / nsub * 1e3,
                     'speedup': ref_s / nsub * args.queries / seconds, 'ours_on_subset': mine.tolist(),
                     'reference_on_subset': ref.tolist(), 'abs_diff': diff, 'equal_on_subset': bool(diff <= 1e-9)}
    return out


def run_map(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(args.seed)
    prototypes = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(args.labels, args.bits))
    t0 = time.perf_counter()
    q_labels = random_labels(rng, args.queries, args.labels)
    db_labels = random_labels(rng, args.database, args.labels)
    q_codes = structured_codes(rng, q_labels, prototypes, args.flip)
    db_codes = structured_codes(rng, db_labels, prototypes, args.flip)
    gen_s = time.perf_counter() - t0
    sample = hamming_distances(np.packbits(q_codes[:20] > 0, axis=1), np.packbits(db_codes > 0, axis=1))
    distinct = np.mean([len(np.unique(r)) for r in sample])

    backends = ['numba', 'numpy'] if kernels.available() else ['numpy']
    if kernels.available():  # compile outside the timing (numba caches the machine code for the next run)
        mean_average_precision(q_codes[:2], db_codes, q_labels[:2], db_labels, topk=args.topk, backend='numba')
        tie_aware_mean_average_precision(q_codes[:2], db_codes, q_labels[:2], db_labels, backend='numba')
    run = {b: (lambda b=b: mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=args.topk,
                                                  backend=b)) for b in backends}
    best = backends[0]
    # ours (the fastest backend) in turn with the floor's sweep: the ratio of the two from the same minutes
    floor, ours, times = measure_floor(q_codes, db_codes, q_labels, db_labels, args.floor_queries, args.repeats,
                                       alongside=run[best])
    timings: dict[str, Any] = {}
    for backend in backends:
        result, backend_times = (ours, times) if backend == best else timed(run[backend], args.repeats)
        timings[backend] = {'map': result.map, 'seconds_median': statistics.median(backend_times),
                            'seconds_all': backend_times,
                            'per_query_ms': statistics.median(backend_times) / args.queries * 1e3}
    ours_s = timings[best]['seconds_median']
    agree = max(abs(t['map'] - ours.map) for t in timings.values())
    tracemalloc.start()
    mean_average_precision(q_codes, db_codes, q_labels, db_labels, topk=args.topk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tie, tie_times = timed(lambda: tie_aware_mean_average_precision(q_codes, db_codes, q_labels, db_labels),
                           args.repeats)
    stable_all, all_times = timed(lambda: mean_average_precision(q_codes, db_codes, q_labels, db_labels),
                                  args.repeats)
    tie_s, all_s = statistics.median(tie_times), statistics.median(all_times)

    nsub = min(args.ref_queries, args.queries)
    ours_sub = mean_average_precision(q_codes[:nsub], db_codes, q_labels[:nsub], db_labels, topk=args.topk).map
    t0 = time.perf_counter()
    ref_sub = reference_map(q_codes[:nsub], db_codes, q_labels[:nsub], db_labels, args.topk)
    ref_s = time.perf_counter() - t0
    ref_extrapolated = ref_s / nsub * args.queries
    diff = max(abs(ours_sub - ref_sub), agree)
    others = other_metrics(args, q_codes, db_codes, q_labels, db_labels, nsub)
    equal = diff <= 1e-9 and all(m['equal_on_subset'] for m in others.values())

    record = {
        'benchmark': 'map',
        'sizes': {'queries': args.queries, 'database': args.database, 'bits': args.bits, 'labels': args.labels,
                  'topk': args.topk, 'reference_queries': nsub},
        'data': {'seed': args.seed, 'flip': args.flip, 'generate_s': gen_s,
                 'mean_distinct_distances_per_query': float(distinct)},
        'tie_break': TIE_BREAK,
        'ours': {'backend': best, 'map': ours.map, 'seconds_median': ours_s, 'seconds_all': times,
                 'per_query_ms': ours_s / args.queries * 1e3, 'peak_traced_bytes': peak},
        'backends': timings,
        'tie_aware': {'map': tie.map, 'seconds_median': tie_s, 'stable_map_all': stable_all.map,
                      'stable_map_all_seconds_median': all_s, 'cost_vs_stable_map_all': tie_s / all_s,
                      'cost_vs_map_at_k': tie_s / ours_s},
        'floor': floor,
        'ours_vs_floor': ours_s / floor['seconds'],
        'reference': {'map_subset': ref_sub, 'seconds_measured': ref_s, 'seconds_extrapolated': ref_extrapolated,
                      'per_query_ms': ref_s / nsub * 1e3},
        'speedup': ref_extrapolated / ours_s,
        'equal_on_subset': {'ours': ours_sub, 'reference': ref_sub, 'abs_diff': diff, 'tolerance': 1e-9,
                            'equal': bool(diff <= 1e-9)},
        'other_metrics': others,
        'process_max_rss_bytes': max_rss_bytes(),
        'machine': machine_info(),
        'kernel_target': kernels.compile_target() if kernels.available() else None,
    }
    mb = 1 << 20
    rows = [
        ('sizes', f'{args.queries} queries x {args.database} database, {args.bits} bits, {args.labels} labels'),
        ('distinct distances / query', f'{distinct:.1f} (many ties)'),
        (f'ours mAP@{args.topk}', f'{ours.map:.6f}'),
    ]
    for backend, t in timings.items():
        rows.append((f'ours, {backend} (median)', f'{t["seconds_median"]:.3f} s  ({t["per_query_ms"]:.3f} ms / query; '
                                                  f'{ref_extrapolated / t["seconds_median"]:.0f}x the reference)'))
    rows += [
        ('ours peak traced memory', f'{peak / mb:.1f} MiB'),
        ('reference time', f'{ref_s:.2f} s for {nsub} queries ({ref_s / nsub * 1e3:.2f} ms / query)'),
        ('reference extrapolated', f'{ref_extrapolated:.1f} s for {args.queries} queries'),
        ('speed-up', f'{ref_extrapolated / ours_s:.0f}x ({best})'),
        ('floor: popcounts', f'{floor["popcounts"]:.3g} at {floor["popcount_rate_per_s"]:.3g}/s measured '
                             f'(XOR + popcount sweep, {floor["threads"]} threads) = {floor["popcount_seconds"]:.3f} s'),
        ('floor: bytes read', f'{floor["bytes_read"] / mb:.1f} MiB at {floor["memory_rate_bytes_per_s"] / 2**30:.1f} '
                              f'GiB/s measured = {floor["memory_seconds"]:.4f} s'),
        ('floor', f'{floor["seconds"]:.3f} s; ours = {ours_s / floor["seconds"]:.1f}x the floor (medians of '
                  f'{args.repeats} runs each, in turn)'),
        ('tie-aware mAP@all', f'{tie.map:.6f} in {tie_s:.3f} s: {tie_s / all_s:.2f}x stable mAP@all '
                              f'({all_s:.3f} s), {tie_s / ours_s:.2f}x mAP@{args.topk}'),
        (f'equal on {nsub} queries', f'{diff <= 1e-9}  (|{ours_sub:.12f} - {ref_sub:.12f}| = {diff:.1e}; '
                                     f'backends within {agree:.1e})'),
        *[(name, f'{m["seconds_median"]:.3f} s, {m["speedup"]:.0f}x the literature loop '
                 f'({m["reference_per_query_ms"]:.2f} ms / query); equal on {nsub} queries: {m["equal_on_subset"]}')
          for name, m in others.items()],
        ('process max RSS', f'{record["process_max_rss_bytes"] / mb:.0f} MiB'),
        ('machine', f'{record["machine"]["cpu"]}, {record["machine"]["usable_cores"]} cores, '
                    f'numpy {np.__version__}'),
    ]
    if record['kernel_target']:
        target = record['kernel_target']
        rows.append(('kernel compiled for', f'{target["cpu_name"]} (AVX-512 BW {target["avx512bw"]}, vector popcount '
                                            f'{target["vector_popcount"]}, VPCOMPRESSB {target["byte_compress"]})'))
    print_table(rows, f'mAP@{args.topk} benchmark')
    print(f'wrote {write_json(record, args)}')
    return 0 if equal else 1


# ----------------------------------------------------------------------------------------------- index
def run_index(args: argparse.Namespace) -> int:
    from .index import HashIndex, _faiss

    faiss = _faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    nbytes = -(-args.bits // 8)
    db = rng.integers(0, 256, size=(args.database, nbytes), dtype=np.uint8)
    q = rng.integers(0, 256, size=(args.queries, nbytes), dtype=np.uint8)
    if args.bits % 8:
        db[:, -1] &= np.uint8((0xFF << (8 - args.bits % 8)) & 0xFF)
        q[:, -1] &= np.uint8((0xFF << (8 - args.bits % 8)) & 0xFF)
    k = args.k

    results: dict[str, Any] = {}
    exact_ids = exact_dist = None
    kinds = ['flat', 'hnsw'] + ([] if args.skip_ivf else ['ivf'])
    for kind in kinds:
        opts: dict[str, Any] = {}
        if kind == 'hnsw':
            opts = {'hnsw_m': args.hnsw_m, 'ef_construction': args.ef_construction, 'ef_search': args.ef_search}
        elif kind == 'ivf':
            opts = {'nlist': args.nlist, 'nprobe': args.nprobe}
        t0 = time.perf_counter()
        index = HashIndex.build(db, args.bits, kind=kind, **opts)
        build_s = time.perf_counter() - t0
        (ids, dist), times = timed(lambda index=index: index.search(q, k), args.repeats)
        search_s = statistics.median(times)
        entry = {'build_s': build_s, 'search_s_median': search_s, 'search_s_all': times,
                 'per_query_ms': search_s / args.queries * 1e3, 'params': index.manifest['params']}
        if kind == 'flat':
            exact_ids, exact_dist = ids, dist
            t0 = time.perf_counter()
            np_ids, np_dist = numpy_topk(q, db, k, args.bits)
            entry['numpy_exact_s'] = time.perf_counter() - t0
            entry['same_distances_as_numpy'] = bool(np.array_equal(np_dist, dist))
            entry['same_ids_as_numpy_index_tie_break'] = bool(np.array_equal(np_ids, ids))
        else:
            overlap = [len(np.intersect1d(a, b)) for a, b in zip(ids, exact_ids, strict=True)]
            kth = exact_dist[:, -1:]
            entry['recall_at_k'] = float(np.mean(overlap) / k)
            entry['tie_aware_recall_at_k'] = float(np.mean(np.sum((dist <= kth) & (ids >= 0), axis=1)) / k)
        results[kind] = entry
        del index

    record = {
        'benchmark': 'index',
        'sizes': {'queries': args.queries, 'database': args.database, 'bits': args.bits, 'k': k},
        'seed': args.seed,
        'results': results,
        'faiss': {'version': getattr(faiss, '__version__', 'unknown'), 'omp_threads': faiss.omp_get_max_threads()},
        'process_max_rss_bytes': max_rss_bytes(),
        'machine': machine_info(),
    }
    print(f'FAISS binary index benchmark: {args.queries} queries x {args.database} random {args.bits}-bit codes, '
          f'k={k}, faiss {record["faiss"]["version"]} ({record["faiss"]["omp_threads"]} threads)')
    header = f'{"index":<6} {"build s":>9} {"search s":>9} {"ms/query":>9} {"recall@k":>9} {"tie-aware":>9}  params'
    print(header)
    print('-' * len(header))
    for kind, e in results.items():
        rec = f'{e["recall_at_k"]:.4f}' if 'recall_at_k' in e else 'exact'
        tie = f'{e["tie_aware_recall_at_k"]:.4f}' if 'tie_aware_recall_at_k' in e else 'exact'
        params = ', '.join(f'{a}={b}' for a, b in e['params'].items()) or '-'
        print(f'{kind:<6} {e["build_s"]:>9.3f} {e["search_s_median"]:>9.3f} {e["per_query_ms"]:>9.3f} '
              f'{rec:>9} {tie:>9}  {params}')
    flat = results['flat']
    print(f'flat vs numpy exact ranking (ties by database index, {flat["numpy_exact_s"]:.2f} s): '
          f'distances equal {flat["same_distances_as_numpy"]}, ids equal {flat["same_ids_as_numpy_index_tie_break"]}')
    print(f'machine: {record["machine"]["cpu"]}, {record["machine"]["usable_cores"]} cores, numpy {np.__version__}')
    print(f'wrote {write_json(record, args)}')
    return 0


# ---------------------------------------------------------------------------------------------- folder
_FOLDER_CHILD = r"""
import json, resource, sys, time
import timm, torch
import deephash_zoo
from deephash_zoo.retrieval import HashIndex

def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
    return 0

model_name, folder, size, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
model = timm.create_model(model_name, pretrained_cfg_overlay=dict(input_size=(3, size, size))).eval()
with torch.inference_mode():
    model(torch.zeros(1, 3, size, size))
base = rss()
t0 = time.perf_counter()
index = HashIndex.from_images(model, folder, batch_size=batch, precision='fp32')
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(rss_after_model=base, peak_rss=peak, seconds=seconds, items=len(index),
                      skipped=len(index.skipped))))
"""


def write_images(folder: Path, n: int, size: int, seed: int) -> None:
    """``n`` PNG files of Fashion-MNIST test images (random pixels without the data set), in 100 subfolders."""
    from PIL import Image

    from deephash_zoo.data import load_fashion_mnist

    try:
        pixels, _ = load_fashion_mnist('test')
    except FileNotFoundError:
        pixels = np.random.default_rng(seed).integers(0, 256, (1000, 28, 28), dtype=np.uint8)
    for i in range(n):
        sub = folder / f'{i % 100:02d}'
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i % len(pixels)]).resize((size, size)).save(sub / f'{i:06d}.png')


def run_folder(args: argparse.Namespace) -> int:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix='deephash-folder-bench-') as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp) / 'images'
        if not args.folder:
            t0 = time.perf_counter()
            write_images(folder, args.images, args.image_size, args.seed)
            print(f'wrote {args.images:,} PNG files ({args.image_size}x{args.image_size}) in '
                  f'{time.perf_counter() - t0:.1f} s')
        proc = subprocess.run([sys.executable, '-c', _FOLDER_CHILD, args.model, str(folder), str(args.img_size),
                               str(args.batch_size)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 << 20
    beyond = child['peak_rss'] - child['rss_after_model']
    record = {'benchmark': 'folder', 'model': args.model, 'img_size': args.img_size, 'batch_size': args.batch_size,
              'images': child['items'], 'skipped': child['skipped'], 'seconds': child['seconds'],
              'ms_per_image': 1000 * child['seconds'] / max(1, child['items']),
              'rss_after_model_bytes': child['rss_after_model'], 'peak_rss_bytes': child['peak_rss'],
              'peak_beyond_model_bytes': beyond, 'machine': machine_info()}
    print_table([
        ('folder', f'{child["items"]:,} images ({child["skipped"]} skipped), '
                   f'{"given" if args.folder else f"written: {args.image_size}x{args.image_size} PNG"}'),
        ('model', f'{args.model} (random weights) at {args.img_size}x{args.img_size}, batches of {args.batch_size}'),
        ('HashIndex.from_images', f'{child["seconds"]:.1f} s ({record["ms_per_image"]:.2f} ms / image, reading '
                                  'included)'),
        ('memory after loading the model', f'{child["rss_after_model"] / mb:.0f} MiB'),
        ('peak memory', f'{child["peak_rss"] / mb:.0f} MiB'),
        ('peak beyond the model', f'{beyond / mb:.0f} MiB'),
        ('machine', f'{record["machine"]["cpu"]}, {record["machine"]["usable_cores"]} cores'),
    ], 'folder index benchmark')
    print(f'wrote {write_json(record, args)}')
    return 0


# -------------------------------------------------------------------------------------------------- cli
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m deephash_zoo.retrieval.benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='command', required=True)

    m = sub.add_parser('map', help='our mAP@K vs the literature implementation (COCO-sized by default)')
    m.add_argument('--queries', type=int, default=5000)
    m.add_argument('--database', type=int, default=117218)
    m.add_argument('--bits', type=int, default=64)
    m.add_argument('--labels', type=int, default=80)
    m.add_argument('--topk', type=int, default=5000)
    m.add_argument('--flip', type=float, default=0.15, help='probability of flipping each code bit')
    m.add_argument('--ref-queries', type=int, default=200, help='queries the slow reference is timed on')
    m.add_argument('--repeats', type=int, default=3)
    m.add_argument('--floor-queries', type=int, default=None,
                   help='queries the popcount floor is measured on (default: all, the work ours does)')
    m.add_argument('--seed', type=int, default=0)
    m.add_argument('--out', default='runs/benchmarks/map.json')
    m.set_defaults(func=run_map)

    i = sub.add_parser('index', help='exact vs HNSW/IVF FAISS binary indexes: build, query, recall@k')
    i.add_argument('--queries', type=int, default=1000)
    i.add_argument('--database', type=int, default=1_000_000)
    i.add_argument('--bits', type=int, default=64)
    i.add_argument('--k', type=int, default=100)
    i.add_argument('--hnsw-m', type=int, default=32)
    i.add_argument('--ef-construction', type=int, default=64)
    i.add_argument('--ef-search', type=int, default=256)
    i.add_argument('--nlist', type=int, default=1024)
    i.add_argument('--nprobe', type=int, default=128)
    i.add_argument('--skip-ivf', action='store_true')
    i.add_argument('--threads', type=int, default=0,
                   help='FAISS OpenMP threads (0: FAISS default). On a shared machine 1 avoids spin-wait stalls')
    i.add_argument('--repeats', type=int, default=3)
    i.add_argument('--seed', type=int, default=0)
    i.add_argument('--out', default='runs/benchmarks/index.json')
    i.set_defaults(func=run_index)

    f = sub.add_parser('folder', help='index a folder of images: peak memory beyond the model, time per image')
    f.add_argument('--images', type=int, default=10_000, help='PNG files to write (without --folder)')
    f.add_argument('--image-size', type=int, default=96, help='side of the written PNG files')
    f.add_argument('--folder', default=None, help='index this folder instead of writing one')
    f.add_argument('--model', default='dath_alexnet_32')
    f.add_argument('--img-size', type=int, default=64, help='model input size')
    f.add_argument('--batch-size', type=int, default=64)
    f.add_argument('--seed', type=int, default=0)
    f.add_argument('--out', default='runs/benchmarks/folder.json')
    f.set_defaults(func=run_folder)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.provenance = provenance('deephash_zoo.retrieval.benchmark', argv)
    return int(args.func(args))


if __name__ == '__main__':
    raise SystemExit(main())
