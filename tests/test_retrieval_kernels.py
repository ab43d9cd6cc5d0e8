"""The compiled metrics kernel (numba, the ``fast`` extra) gives exactly what the NumPy path gives.

Every statistic of :func:`evaluate` (mAP@K, P@N / R@N, radius precision and recall, the PR curve, tie-aware
mAP) is compared on single- and multi-label data, code lengths with 1, 2 and 4-byte word views and more
than one 64-bit word, many ties, and K below, at and above the database size; then the vector blocks, the
label bitmaps, the guessed-threshold path's fallback, wide class indices, codes too long for byte distances,
and the NumPy path when numba is absent.
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


@pytest.fixture(params=[True, False], ids=['vector-compress', 'bit-loop'])
def gather(request, monkeypatch):
    """Both ways the kernel gathers keys, whatever this CPU would choose (each gives every result)."""
    monkeypatch.setattr(kernels, 'byte_compress', lambda: request.param)
    return request.param


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-15), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize('multi', [False, True], ids=['single-label', 'multi-label'])
@pytest.mark.parametrize('bits', [8, 12, 32, 64, 100, 127, 130])
def test_every_metric_equals_the_numpy_path(bits, multi, gather):
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


@pytest.mark.parametrize('multi', [False, True], ids=['single-label', 'multi-label'])
@pytest.mark.parametrize('bits', [16, 64, 100])
def test_the_sampled_threshold_path_equals_the_numpy_path(bits, multi, gather):
    """Databases of SAMPLE_MIN_BLOCKS blocks or more guess the threshold from a sample (smaller ones count
    every distance): mAP@K and hits@N there, with ties and a partial last block; P@N's recall and the radius
    metrics, whose totals and counts come without ranking or a histogram."""
    rng = np.random.default_rng(bits + 1)
    q, d, ql, dl = _problem(rng, 6, kernels.SAMPLE_MIN_BLOCKS * 64 + 37, bits, multi)
    for topk in (1, 300, 7000):
        fast = M.mean_average_precision(q, d, ql, dl, topk, backend='numba').per_query
        np.testing.assert_allclose(fast, M.mean_average_precision(q, d, ql, dl, topk, backend='numpy').per_query,
                                   rtol=1e-12, atol=0)
    a = M.precision_recall_at_n(q, d, ql, dl, ns=(1, 10, 999, 5000), backend='numba')
    b = M.precision_recall_at_n(q, d, ql, dl, ns=(1, 10, 999, 5000), backend='numpy')
    np.testing.assert_allclose(a.precision, b.precision, rtol=1e-12, atol=0)
    np.testing.assert_allclose(a.recall, b.recall, rtol=1e-12, atol=0)
    for radius in (0, 2, bits // 2, bits - 1, bits, bits + 5):  # the totals and radius counts without ranking
        a = M.hamming_radius_precision_recall(q, d, ql, dl, radius=radius, backend='numba')
        b = M.hamming_radius_precision_recall(q, d, ql, dl, radius=radius, backend='numpy')
        assert (a.precision, a.recall) == pytest.approx((b.precision, b.recall), rel=1e-12, abs=0), radius


@pytest.mark.parametrize(('words', 'key_dtype'), [(1, np.uint8), (2, np.uint8), (2, np.uint16), (4, np.uint16)])
def test_vector_blocks_give_every_key_and_mask_in_item_order(words, key_dtype):
    """The block-transposed sweep: each block's 64 keys ``2 * distance + relevant``, its ``distance < t`` mask
    (from the codes and from the stored keys), its ``distance == t`` mask, its relevant mask, and the keys a
    mask selects compressed in order, equal NumPy's for every item, codes of one, two and four 64-bit words
    (63, 127 and 255 bits) with the byte or 16-bit keys their length takes, thresholds from 0 to the largest;
    and the floor sweep sums every distance."""
    from numba import njit

    from deephash_zoo.retrieval import simd

    @njit
    def sweep(db, q, t, rel, kb, below, stored, at, at_relevant, relevant, packed):
        m = 0
        for b in range(below.shape[0]):
            below[b] = simd.block_keys(db, q, np.int64(b * 64), rel[b], np.int64(2 * t), kb)
            stored[b] = simd.stored_below(kb, np.int64(b * 64), np.int64(2 * t))
            at[b], at_relevant[b] = simd.key_masks(kb, np.int64(b * 64), np.int64(t))
            relevant[b] = simd.relevant_mask(kb, np.int64(b * 64))
            simd.compress_store(kb, np.int64(b * 64), below[b], packed, np.int64(m))
            m += np.int64(bin_count(below[b]))
        return m

    @njit
    def bin_count(x):
        c = 0
        while x != 0:
            x &= x - np.uint64(1)
            c += 1
        return c

    @njit
    def floor(db, q):
        return simd.sweep_popcount_sum(db, q)

    rng = np.random.default_rng(words)
    n = 64 * 5
    codes = rng.integers(0, 2**63, size=(n, words), dtype=np.uint64)
    codes[:7] = rng.integers(0, 2**63, size=words, dtype=np.uint64)  # ties at one distance
    codes[:, -1] &= np.uint64(2**63 - 1)  # at most 255 bits used: every distance fits a byte
    q = codes[3] ^ np.uint64(0b1011)
    expected = np.zeros(n, dtype=np.int64)
    for w in range(words):
        expected += np.bitwise_count(codes[:, w] ^ q[w]).astype(np.int64)
    relevant = rng.random(n) < 0.4
    rel = np.packbits(relevant, bitorder='little').view(np.uint64)
    db = kernels.transpose_blocks(codes)
    assert floor(db, q) == expected.sum()
    bits = lambda m: np.unpackbits(m.view(np.uint8), bitorder='little').astype(bool)  # noqa: E731
    top = 127 if key_dtype == np.uint8 else 255  # byte keys hold distances up to 127 (codes up to 127 bits)
    assert expected.max() <= top
    for t in (0, 3, int(np.median(expected)), int(expected[0]), top):
        kb = np.zeros(n + 64, dtype=key_dtype)
        packed = np.zeros(n + 64, dtype=key_dtype)
        below, stored, at, at_relevant, rel_mask = (np.zeros(5, dtype=np.uint64) for _ in range(5))
        m = sweep(db, q, t, rel, kb, below, stored, at, at_relevant, rel_mask, packed)
        np.testing.assert_array_equal(kb[:n], 2 * expected + relevant)
        np.testing.assert_array_equal(bits(below), expected < t, err_msg=f'{t=}')
        np.testing.assert_array_equal(stored, below, err_msg=f'{t=}')
        np.testing.assert_array_equal(bits(at), expected == t, err_msg=f'{t=}')
        np.testing.assert_array_equal(bits(at_relevant), (expected == t) & relevant, err_msg=f'{t=}')
        np.testing.assert_array_equal(bits(rel_mask), relevant, err_msg=f'{t=}')
        np.testing.assert_array_equal(packed[:m], (2 * expected + relevant)[expected < t], err_msg=f'{t=}')


def test_label_bitmaps_mark_each_labels_items():
    rng = np.random.default_rng(0)
    labels = (rng.random((130, 70)) < 0.1).astype(np.uint8)
    words = M._label_words(labels, 'database')
    maps = kernels.label_bitmaps(words)
    as_items = np.unpackbits(maps.view(np.uint8), axis=1, bitorder='little')[:, :130].astype(bool)  # (64 w, n)
    for w in range(words.shape[1]):
        for p in range(64):
            has = (words[:, w] >> np.uint64(p)) & np.uint64(1)
            np.testing.assert_array_equal(as_items[64 * w + p], has.astype(bool))


def test_a_short_threshold_guess_falls_back_to_the_exact_count(gather):
    """Items near the query sit exactly in the blocks the guess samples: the sample overestimates them, the
    guessed threshold holds fewer than K items, and the kernel must count the stored distances exactly."""
    rng = np.random.default_rng(0)
    n, k = kernels.SAMPLE_MIN_BLOCKS * 64, 1000
    q = np.ones((2, 64), dtype=np.int8)
    d = -np.ones((n, 64), dtype=np.int8)
    d[:, :8] = 1  # distance 56 for most items
    sampled = (np.arange(0, kernels.SAMPLE_MIN_BLOCKS, kernels.SAMPLE_EVERY)[:, None] * 64 + np.arange(8)).ravel()
    d[sampled[:100]] = 1  # distance 0 for 100 sampled items: the sample says "3,200 items at distance 0"
    ql, dl = np.zeros(2, dtype=np.int64), rng.integers(0, 2, n)
    fast = M.mean_average_precision(q, d, ql, dl, k, backend='numba')
    slow = M.mean_average_precision(q, d, ql, dl, k, backend='numpy')
    np.testing.assert_allclose(fast.per_query, slow.per_query, rtol=1e-12, atol=0)
    assert fast.per_query[0] != 0


def test_more_than_65536_classes_compare_as_wide_integers():
    """Class indices past uint16 (where the NumPy path widens them) compare as int32 in the kernel."""
    rng = np.random.default_rng(2)
    n = 70_000
    d = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, 16))
    dl = np.arange(n) % 66_000  # 66,000 classes
    q, ql = d[:5], dl[:5]
    fast = M.evaluate(q, d, ql, dl, topk=500, backend='numba')
    _same(fast, M.evaluate(q, d, ql, dl, topk=500, backend='numpy'))


def test_codes_longer_than_a_byte_distance_take_the_numpy_path():
    rng = np.random.default_rng(3)
    q, d, ql, dl = _problem(rng, 4, 100, 300, False)
    auto = M.mean_average_precision(q, d, ql, dl, 20)  # auto: NumPy, no error
    assert auto.map == M.mean_average_precision(q, d, ql, dl, 20, backend='numpy').map
    with pytest.raises(ValueError, match='the compiled kernel handles codes of up to 255 bits, got 300'):
        M.mean_average_precision(q, d, ql, dl, 20, backend='numba')


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


def test_map_benchmark_times_ours_in_turn_with_the_floor(tmp_path, capsys):
    """The benchmark command on a small problem: ours equals the literature loops (mAP@K, P@N, the radius
    metrics), and ours and the floor's sweep are timed in alternating rounds (the ratio's two medians from the
    same minutes)."""
    import json

    from deephash_zoo.retrieval.benchmark import main

    out = tmp_path / 'map.json'
    assert main(['map', '--queries', '40', '--database', '3000', '--labels', '10', '--topk', '500',
                 '--ref-queries', '10', '--repeats', '3', '--out', str(out)]) == 0
    record = json.loads(out.read_text())
    assert record['equal_on_subset']['equal']
    assert record['floor']['timed_in_turn_with_ours'] and len(record['floor']['seconds_all']) == 3
    assert len(record['ours']['seconds_all']) == 3
    assert record['ours_vs_floor'] == pytest.approx(record['ours']['seconds_median'] / record['floor']['seconds'])
    assert set(record['other_metrics']) == {'P@100, P@1000', 'precision, recall (r <= 2)'}
    assert all(m['equal_on_subset'] and m['speedup'] > 0 for m in record['other_metrics'].values())
    assert set(record['kernel_target']) == {'cpu_name', 'avx512bw', 'vector_popcount', 'byte_compress'}
    # when and how: the record remakes itself (a figure quoted from it can name both)
    assert record['command'] == ('python -m deephash_zoo.retrieval.benchmark map --queries 40 --database 3000 '
                                 f'--labels 10 --topk 500 --ref-queries 10 --repeats 3 --out {out}')
    assert record['generated'].startswith('20') and record['generated'].endswith('+00:00')
    out = capsys.readouterr().out
    assert 'in turn' in out and 'kernel compiled for' in out


def test_blocks_start_on_a_cache_line_and_the_compress_follows_the_cpu(monkeypatch):
    """64-byte vectors from a line boundary (a split load on every block made the sweep 1.4x slower here), and
    the vector compress chosen from the features numba compiles for (NUMBA_CPU_FEATURES where set)."""
    from numba.core import config

    for n in (1, 64, 1000):
        words = np.arange(n, dtype=np.uint64)[:, None]
        assert kernels.transpose_blocks(words).ctypes.data % 64 == 0
        assert kernels.aligned_zeros((3, n), np.int32).ctypes.data % 64 == 0
    monkeypatch.setattr(config, 'CPU_FEATURES', '+avx2,+avx512f,+avx512vbmi2')
    assert kernels.byte_compress()
    monkeypatch.setattr(config, 'CPU_FEATURES', '+avx2,+avx512f,-avx512vbmi2')
    assert not kernels.byte_compress()


@pytest.mark.parametrize('cols', [64, 80, 12, 100])
@pytest.mark.parametrize('dtype', ['int8', 'float32', 'uint8', 'bool'])
def test_the_compiled_packer_equals_packbits_and_flags_bad_values(dtype, cols):
    """Sign codes and multi-hot labels packed in one parallel pass (rows of whole bytes: 64 values a vector
    compare, with a tail; others a byte at a time) equal numpy.packbits, padded to a width when asked, and a
    single bad value anywhere (3, 0 or NaN in sign codes; 2 in labels) is reported."""
    rng = np.random.default_rng(cols)
    n = 1001  # not a multiple of anything: the flat path's tail
    if dtype == 'bool':
        arr, signs = rng.random((n, cols)) < 0.3, False
    elif dtype == 'uint8':
        arr, signs = (rng.random((n, cols)) < 0.3).astype(dtype), False
    else:
        arr, signs = rng.choice(np.array([-1, 1], dtype=dtype), size=(n, cols)), True
    packed, ok = kernels.pack_rows(arr, signs)
    assert ok
    np.testing.assert_array_equal(packed, np.packbits(arr > 0 if signs else arr != 0, axis=1))
    padded, ok = kernels.pack_rows(arr, signs, width=16)
    assert ok and padded.shape == (n, 16) and not padded[:, packed.shape[1]:].any()
    np.testing.assert_array_equal(padded[:, :packed.shape[1]], packed)
    if dtype == 'bool':
        return
    for bad in ([3, 0, np.nan] if dtype == 'float32' else [3, 0]) if signs else [2]:
        for where in ((0, 0), (n - 1, cols - 1), (n // 2, cols // 2)):
            broken = arr.copy()
            broken[where] = bad
            assert not kernels.pack_rows(broken, signs)[1], (bad, where)


def test_small_inputs_pack_without_importing_numba():
    """Packing a few codes (an index query, an encode call) stays NumPy's and does not import numba."""
    script = ('import sys, numpy as np\n'
              'from deephash_zoo.retrieval.codes import as_packed\n'
              'as_packed(np.ones((10, 32), dtype=np.int8))\n'
              'print("numba" in sys.modules)')
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'False', done.stderr[-2000:]


def test_large_inputs_pack_the_same_with_and_without_the_compiled_packer(monkeypatch):
    """The metrics' inputs (sign codes, multi-hot labels) through the packer give what the NumPy path gives,
    and a bad value still gets the NumPy path's message naming it."""
    rng = np.random.default_rng(5)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(3000, 64))
    labels = (rng.random((3000, 70)) < 0.1).astype(np.uint8)
    from deephash_zoo.retrieval import codes as codes_module
    from deephash_zoo.retrieval.codes import as_packed

    monkeypatch.setattr(codes_module, 'PACK_MIN_ELEMENTS', 1000)
    fast_codes, fast_labels = as_packed(codes)[0], M._label_words(labels, 'database')
    broken = codes.copy()
    broken[1234, 5] = 7
    with pytest.raises(ValueError, match='non-binary value 7'):
        as_packed(broken)
    monkeypatch.setattr(kernels, 'available', lambda: False)
    np.testing.assert_array_equal(fast_codes, as_packed(codes)[0])
    np.testing.assert_array_equal(fast_labels, M._label_words(labels, 'database'))


AVX2_FEATURES = '+64bit,+avx,+avx2,+bmi,+bmi2,+fma,+popcnt,+lzcnt,+sse4.2,+cx16,+movbe,+f16c'


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine not in ('x86_64', 'AMD64'), reason='compiles for an x86 AVX2 CPU')
def test_the_kernel_compiled_for_an_avx2_cpu_equals_the_numpy_path(tmp_path):
    """The code paths an AVX2 CPU compiles (no AVX-512 mask registers: the relevance bits spread by a shuffle;
    no VPCOMPRESSB: the bit loop), built in a fresh process for Haswell whatever this CPU is, give the NumPy
    path's numbers: single- and multi-label, small databases and sampled thresholds."""
    script = '''
import numpy as np
from deephash_zoo.retrieval import kernels, metrics as M
assert not kernels.byte_compress()
rng = np.random.default_rng(0)
for n in (700, kernels.SAMPLE_MIN_BLOCKS * 64 + 37):
    for bits in (64, 100):
        q = rng.choice(np.array([-1, 1], dtype=np.int8), size=(5, bits))
        d = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, bits))
        d[: n // 5] = d[0]
        for multi in (False, True):
            if multi:
                ql, dl = (rng.random((5, 70)) < 0.1).astype(np.uint8), (rng.random((n, 70)) < 0.1).astype(np.uint8)
            else:
                ql, dl = rng.integers(0, 5, 5), rng.integers(0, 5, n)
            for topk in (1, 300, 5000):
                a = M.mean_average_precision(q, d, ql, dl, topk, backend='numba').per_query
                b = M.mean_average_precision(q, d, ql, dl, topk, backend='numpy').per_query
                assert np.array_equal(a, b), (n, bits, multi, topk)
print('ok')
'''
    env = dict(os.environ, NUMBA_CPU_NAME='haswell', NUMBA_CPU_FEATURES=AVX2_FEATURES,
               NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]
