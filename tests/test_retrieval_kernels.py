"""The compiled metrics kernel (numba, the ``fast`` extra) gives exactly what the NumPy path gives.

Every statistic of :func:`evaluate` (mAP@K, P@N / R@N, radius precision and recall, the PR curve, tie-aware
mAP) is compared on single- and multi-label data, code lengths with 1, 2 and 4-byte word views and more
than one 64-bit word, many ties, and K below, at and above the database size; then the guessed-threshold
path's fallback, and the NumPy path when numba is absent.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from deephash_zoo.retrieval import kernels
from deephash_zoo.retrieval import metrics as M

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba not installed (pip install '.[fast]')")


def _problem(rng, nq, n, bits, multi, ties=True):
    q = rng.choice(np.array([-1, 1], dtype=np.int8), size=(nq, bits))
    d = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, bits))
    if ties:
        d[: n // 5] = d[0]  # a fifth of the database shares one code: ties at every query's distance to it
        q[0] = d[0]
    if multi:
        ql = (rng.random((nq, 70)) < 0.05).astype(np.uint8)
        dl = (rng.random((n, 70)) < 0.05).astype(np.uint8)
        ql[:, 0] = 1  # every query has a label, so most have relevant items
    else:
        ql, dl = rng.integers(0, 5, nq), rng.integers(0, 5, n)
    return q, d, ql, dl


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize('multi', [False, True], ids=['single-label', 'multi-label'])
@pytest.mark.parametrize('bits', [8, 12, 32, 64, 100, 127, 130])
def test_every_metric_equals_the_numpy_path(bits, multi):
    rng = np.random.default_rng(bits)
    q, d, ql, dl = _problem(rng, 23, 700, bits, multi)
    for topk in (None, 1, 50, 699, 5000):
        fast = M.evaluate(q, d, ql, dl, topk=topk, backend='numba')
        _same(fast, M.evaluate(q, d, ql, dl, topk=topk, backend='numpy'))
    fast = M.mean_average_precision(q, d, ql, dl, 100, backend='numba').per_query
    slow = M.mean_average_precision(q, d, ql, dl, 100, backend='numpy').per_query
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0)
    for fn in (M.precision_recall_at_n, M.hamming_radius_precision_recall, M.precision_recall_curve,
               M.tie_aware_mean_average_precision):
        a, b = fn(q, d, ql, dl, backend='numba'), fn(q, d, ql, dl, backend='numpy')
        for field in ('precision', 'recall', 'map', 'per_query'):
            if hasattr(a, field):
                np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-12, atol=0)


@pytest.mark.parametrize('n', [0, 63, 64, 1000])
def test_candidate_collection_equals_flatnonzero(n):
    """The eight-distances-per-word sweep (byte distances < 128) and the byte loop (wider ones) both return
    every index at distance <= t, in order, for every threshold, including the largest byte distance 127."""
    rng = np.random.default_rng(n)
    for nvals, dtype in ((128, np.uint8), (200, np.uint8), (300, np.uint16)):
        dist = rng.integers(0, nvals, n).astype(dtype)
        if n:
            dist[-1] = nvals - 1
        cand = np.empty(n + 1, dtype=np.int32)
        for t in (0, 1, nvals // 2, nvals - 2, nvals - 1):
            m = kernels._collect(dist, t, cand, nvals)
            np.testing.assert_array_equal(cand[:m], np.flatnonzero(dist <= t), err_msg=f'{nvals=} {t=}')


def test_a_short_threshold_guess_falls_back_to_the_exact_count():
    """Items near the query sit exactly where the 1-in-16 sample looks: the sample overestimates them, the
    guessed threshold collects fewer than K items, and the kernel must count again."""
    rng = np.random.default_rng(0)
    n, k = 16 * 1024, 1000
    q = np.ones((2, 64), dtype=np.int8)
    d = -np.ones((n, 64), dtype=np.int8)
    d[:, :8] = 1  # distance 56 for most items
    d[::16][:100] = 1  # distance 0 for 100 sampled positions: the sample says "1,600 items at distance 0"
    ql, dl = np.zeros(2, dtype=np.int64), rng.integers(0, 2, n)
    fast = M.mean_average_precision(q, d, ql, dl, k, backend='numba')
    slow = M.mean_average_precision(q, d, ql, dl, k, backend='numpy')
    np.testing.assert_allclose(fast.per_query, slow.per_query, rtol=1e-12, atol=0)


def test_numpy_path_when_numba_is_absent(monkeypatch):
    rng = np.random.default_rng(1)
    q, d, ql, dl = _problem(rng, 5, 200, 16, False)
    expected = M.evaluate(q, d, ql, dl, backend='numpy')
    monkeypatch.setattr(kernels, 'available', lambda: False)
    _same(M.evaluate(q, d, ql, dl), expected)  # auto: NumPy
    with pytest.raises(ImportError, match=r"backend='numba' needs numba; pip install 'deephash-zoo\[fast\]'"):
        M.evaluate(q, d, ql, dl, backend='numba')
    with pytest.raises(ValueError, match="backend must be one of"):
        M.evaluate(q, d, ql, dl, backend='gpu')


def test_the_kernel_leaves_torch_thread_count_as_it_was():
    """numba's OpenMP layer sets the OpenMP thread count when it starts its threads, and torch shares that libgomp:
    the first mAP of a process must not undo a user's ``torch.set_num_threads`` (a fresh process, as numba starts
    its threads once)."""
    script = ('import numpy as np, torch\n'
              'torch.set_num_threads(1)\n'
              'from deephash_zoo.retrieval import kernels, metrics\n'
              'assert torch.get_num_threads() == 1\n'  # torch applies its count at its first use, as a user's would
              'q = np.where(np.random.default_rng(0).random((40, 16)) < 0.5, -1, 1).astype(np.int8)\n'
              'metrics.mean_average_precision(q, q, np.arange(40) % 4, np.arange(40) % 4)\n'
              'print(kernels.numba.get_num_threads(), torch.get_num_threads())\n')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, 'NUMBA_NUM_THREADS': '2'})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ['2', '1'], done.stdout
