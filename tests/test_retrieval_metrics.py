"""Retrieval metrics against slow, literal loop implementations, a hand-computed example and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from deephash_zoo.retrieval import codes as codes_mod
from deephash_zoo.retrieval import metrics
from deephash_zoo.retrieval.codes import as_packed, hamming_distances
from deephash_zoo.retrieval.metrics import (
    TIE_BREAK,
    evaluate,
    hamming_radius_precision_recall,
    mean_average_precision,
    precision_recall_at_n,
    precision_recall_curve,
)


# ------------------------------------------------------------------------------------ literal reference
def _relevant(ql, dl) -> bool:
    if np.ndim(ql) == 0:
        return int(ql) == int(dl)
    return any(a and b for a, b in zip(ql, dl, strict=True))


def _literal(q, db, ql, dl):
    """Per query: distances, ranking by (distance, index), relevance - all with Python loops."""
    out = []
    for i in range(len(q)):
        dist = [sum(int(a != b) for a, b in zip(q[i], db[j], strict=True)) for j in range(len(db))]
        order = sorted(range(len(db)), key=lambda j, dist=dist: (dist[j], j))
        rel = [_relevant(ql[i], dl[j]) for j in range(len(db))]
        out.append((dist, order, rel))
    return out


def literal_map(q, db, ql, dl, topk=None):
    aps = []
    for _, order, rel in _literal(q, db, ql, dl):
        top = order if topk is None else order[:topk]
        hits, total = 0, 0.0
        for r, j in enumerate(top, start=1):
            if rel[j]:
                hits += 1
                total += hits / r
        aps.append(total / hits if hits else 0.0)
    return sum(aps) / len(aps)


def literal_at_n(q, db, ql, dl, ns):
    ps, rs = [], []
    for n in ns:
        p_sum = r_sum = 0.0
        for _, order, rel in _literal(q, db, ql, dl):
            top = order[:n]
            hits = sum(rel[j] for j in top)
            p_sum += hits / min(n, len(db))
            r_sum += hits / sum(rel) if sum(rel) else 0.0
        ps.append(p_sum / len(q))
        rs.append(r_sum / len(q))
    return ps, rs


def literal_radius(q, db, ql, dl, radius):
    p_sum = r_sum = 0.0
    for dist, _, rel in _literal(q, db, ql, dl):
        inside = [j for j in range(len(db)) if dist[j] <= radius]
        hits = sum(rel[j] for j in inside)
        p_sum += hits / len(inside) if inside else 0.0
        r_sum += hits / sum(rel) if sum(rel) else 0.0
    return p_sum / len(q), r_sum / len(q)


# ------------------------------------------------------------------------------------------------ data
def _data(multi: bool, nq: int = 30, ndb: int = 200, bits: int = 8, seed: int = 0):
    """Few bits, many items: lots of Hamming ties; one query has no relevant item at all."""
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((nq, bits)) < 0.5, -1, 1).astype(np.int8)
    db = np.where(rng.random((ndb, bits)) < 0.5, -1, 1).astype(np.int8)
    if multi:
        ql = (rng.random((nq, 6)) < 0.3).astype(np.int64)
        dl = (rng.random((ndb, 6)) < 0.3).astype(np.int64)
        ql[0] = 0
    else:
        ql = rng.integers(0, 5, nq)
        dl = rng.integers(0, 5, ndb)
        ql[0] = 99
    return q, db, ql, dl


@pytest.fixture(scope='module', params=[False, True], ids=['single-label', 'multi-label'])
def data(request):
    return _data(request.param)


# ----------------------------------------------------------------------------------- against the loops
@pytest.mark.parametrize('topk', [1, 5, 37, 200, 500, None])
def test_map_matches_literal_loop(data, topk):
    got = mean_average_precision(*data, topk=topk)
    assert got.map == pytest.approx(literal_map(*data, topk=topk), abs=1e-9)
    assert got.tie_break == TIE_BREAK == 'database index (stable)'
    assert got.per_query[0] == 0.0  # the query without relevant items counts 0 and is averaged in
    assert got.per_query.shape == (30,)


def test_precision_recall_at_n_matches_literal_loop(data):
    ns = (1, 3, 10, 64, 200, 1000)
    got = precision_recall_at_n(*data, ns=ns)
    want_p, want_r = literal_at_n(*data, ns)
    np.testing.assert_allclose(got.precision, want_p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.recall, want_r, rtol=0, atol=1e-9)


@pytest.mark.parametrize('radius', [0, 1, 2, 5, 8])
def test_radius_matches_literal_loop(data, radius):
    got = hamming_radius_precision_recall(*data, radius=radius)
    want_p, want_r = literal_radius(*data, radius)
    assert got.precision == pytest.approx(want_p, abs=1e-9)
    assert got.recall == pytest.approx(want_r, abs=1e-9)


def test_pr_curve_matches_literal_loop(data):
    got = precision_recall_curve(*data)
    assert list(got.radius) == list(range(9))
    for r in range(9):
        want_p, want_r = literal_radius(*data, r)
        assert got.precision[r] == pytest.approx(want_p, abs=1e-9)
        assert got.recall[r] == pytest.approx(want_r, abs=1e-9)


def test_evaluate_matches_the_single_metrics_and_is_json(data):
    out = evaluate(*data, topk=50, ns=(10, 100))
    assert out == json.loads(json.dumps(out))
    assert set(out) == {'map', 'map_topk', 'map_tie_aware', 'p_at_n', 'r_at_n', 'precision_radius2',
                        'recall_radius2', 'pr_curve', 'bits', 'num_queries', 'num_database', 'tie_break'}
    assert out['map'] == pytest.approx(literal_map(*data, topk=50), abs=1e-9)
    assert out['map_topk'] == 50
    want_p, want_r = literal_at_n(*data, (10, 100))
    assert out['p_at_n'] == pytest.approx({'10': want_p[0], '100': want_p[1]}, abs=1e-9)
    assert out['r_at_n'] == pytest.approx({'10': want_r[0], '100': want_r[1]}, abs=1e-9)
    want_p2, want_r2 = literal_radius(*data, 2)
    assert out['precision_radius2'] == pytest.approx(want_p2, abs=1e-9)
    assert out['recall_radius2'] == pytest.approx(want_r2, abs=1e-9)
    assert out['pr_curve']['radius'] == list(range(9))
    assert (out['bits'], out['num_queries'], out['num_database']) == (8, 30, 200)
    assert out['tie_break'] == 'database index (stable)'
    assert evaluate(*data)['map_topk'] == 'all'


def test_multiword_codes_and_labels():
    """100-bit codes (two 64-bit words) and 70 labels (two label words)."""
    rng = np.random.default_rng(3)
    q = np.where(rng.random((6, 100)) < 0.5, -1, 1)
    db = np.where(rng.random((40, 100)) < 0.5, -1, 1)
    ql = (rng.random((6, 70)) < 0.05).astype(np.uint8)
    dl = (rng.random((40, 70)) < 0.05).astype(np.uint8)
    assert mean_average_precision(q, db, ql, dl, topk=10).map == pytest.approx(literal_map(q, db, ql, dl, 10), abs=1e-9)


# ------------------------------------------------------------------------------------ hand-computed example
# 4-bit codes, query q = ++++, five database items (distance to q, relevant?):
#   item 0: -+++  d=1  no       ranking by (distance, index): 1, 0, 3, 2, 4
#   item 1: ++++  d=0  yes      relevance in rank order:      R, N, R, R, N
#   item 2: --++  d=2  yes      (breaking the 0/3 tie the other way would give R, R, N, R, N)
#   item 3: +++-  d=1  yes
#   item 4: ---+  d=3  no
# mAP@all = (1/1 + 2/3 + 3/4) / 3 = (12/12 + 8/12 + 9/12) / 3 = 29/36
# mAP@3   = (1/1 + 2/3) / 2 = 5/6        mAP@2 = (1/1) / 1 = 1        mAP@1 = 1
# P@1 = 1/1, P@2 = 1/2, P@3 = 2/3, P@5 = 3/5;  3 relevant in all: R@1 = 1/3, R@2 = 1/3, R@3 = 2/3, R@5 = 3/3
# radius 2 retrieves items 1, 0, 3, 2: precision = 3/4, recall = 3/3
# radius 0: {1} -> P = 1, R = 1/3;  radius 1: {1, 0, 3} -> P = 2/3, R = 2/3;  radius 3, 4: P = 3/5, R = 1
HAND_Q = np.array([[1, 1, 1, 1]], dtype=np.int8)
HAND_DB = np.array([[-1, 1, 1, 1], [1, 1, 1, 1], [-1, -1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, 1]], dtype=np.int8)
HAND_LABELS = {
    'single': (np.array([7]), np.array([3, 7, 7, 7, 3])),
    'multi': (np.array([[1, 0, 1]]), np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]])),
}


@pytest.mark.parametrize('kind', ['single', 'multi'])
def test_hand_computed_example(kind):
    ql, dl = HAND_LABELS[kind]
    args = (HAND_Q, HAND_DB, ql, dl)
    assert mean_average_precision(*args).map == pytest.approx(29 / 36, abs=1e-12)
    assert mean_average_precision(*args, topk=3).map == pytest.approx(5 / 6, abs=1e-12)
    assert mean_average_precision(*args, topk=2).map == pytest.approx(1.0, abs=1e-12)
    assert mean_average_precision(*args, topk=1).map == pytest.approx(1.0, abs=1e-12)
    at_n = precision_recall_at_n(*args, ns=(1, 2, 3, 5))
    np.testing.assert_allclose(at_n.precision, [1, 1 / 2, 2 / 3, 3 / 5], atol=1e-12)
    np.testing.assert_allclose(at_n.recall, [1 / 3, 1 / 3, 2 / 3, 1], atol=1e-12)
    r2 = hamming_radius_precision_recall(*args, radius=2)
    assert (r2.precision, r2.recall) == pytest.approx((3 / 4, 1.0), abs=1e-12)
    curve = precision_recall_curve(*args)
    np.testing.assert_allclose(curve.precision, [1, 2 / 3, 3 / 4, 3 / 5, 3 / 5], atol=1e-12)
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3, 1, 1, 1], atol=1e-12)


def test_query_without_relevant_items_counts_zero():
    # second query -+++ (distance 1 to item 1) with a class nobody has: AP 0, recall 0, precision 0
    q = np.vstack([HAND_Q, [[-1, 1, 1, 1]]])
    ql, dl = np.array([7, 5]), HAND_LABELS['single'][1]
    assert mean_average_precision(q, HAND_DB, ql, dl).map == pytest.approx(29 / 72, abs=1e-12)
    r2 = hamming_radius_precision_recall(q, HAND_DB, ql, dl, radius=2)
    assert (r2.precision, r2.recall) == pytest.approx((3 / 8, 1 / 2), abs=1e-12)


def test_empty_radius_set_has_precision_zero():
    far = -HAND_Q  # distance 4 to item 1; nothing within radius 0
    r0 = hamming_radius_precision_recall(far, HAND_DB, [7], HAND_LABELS['single'][1], radius=0)
    assert (r0.precision, r0.recall) == (0.0, 0.0)


# ------------------------------------------------------------------------------------- input layouts
def test_sign_and_packed_inputs_agree(data):
    q, db, ql, dl = data
    want = evaluate(q, db, ql, dl, topk=20, ns=(5, 50))
    qp, bits = as_packed(q)
    dbp, _ = as_packed(db)
    assert bits == 8 and qp.dtype == np.uint8 and qp.shape == (30, 1)
    assert evaluate(qp, dbp, ql, dl, topk=20, ns=(5, 50)) == want
    assert evaluate(q.astype(np.float32), dbp, ql, dl, topk=20, ns=(5, 50)) == want
    assert evaluate(qp, db.astype(np.int64), ql, dl, topk=20, ns=(5, 50), bits=8) == want


def test_torch_inputs_agree(data):
    torch = pytest.importorskip('torch')
    q, db, ql, dl = data
    want = mean_average_precision(q, db, ql, dl, topk=20).map
    got = mean_average_precision(torch.from_numpy(q).float(), torch.from_numpy(db), torch.from_numpy(ql),
                                 torch.from_numpy(dl), topk=20).map
    assert got == want


def test_packed_codes_with_partial_last_byte():
    rng = np.random.default_rng(5)
    q = np.where(rng.random((7, 12)) < 0.5, -1, 1)
    db = np.where(rng.random((50, 12)) < 0.5, -1, 1)
    ql, dl = rng.integers(0, 3, 7), rng.integers(0, 3, 50)
    qp, bits = as_packed(q)
    assert bits == 12 and qp.shape == (7, 2)
    want = precision_recall_curve(q, db, ql, dl)
    got = precision_recall_curve(qp, as_packed(db)[0], ql, dl, bits=12)
    assert list(got.radius) == list(range(13))
    np.testing.assert_array_equal(got.precision, want.precision)


@pytest.mark.parametrize('chunk', [1, 7, None, 30])
def test_chunking_does_not_change_results(data, chunk):
    assert evaluate(*data, topk=25, ns=(3, 40), chunk_size=chunk) == evaluate(*data, topk=25, ns=(3, 40))
    a = mean_average_precision(*data, topk=25, chunk_size=chunk).per_query
    np.testing.assert_array_equal(a, mean_average_precision(*data, topk=25, chunk_size=30).per_query)


# ------------------------------------------------------------------------------------------- internals
def _lexsort_topk(d, k):
    return np.stack([np.lexsort((np.arange(d.shape[1]), row))[:k] for row in d])


def test_rank_topk_sampled_threshold_and_repair():
    """Large enough for the sampled threshold guess; a too-small guess is detected and repaired."""
    rng = np.random.default_rng(7)
    n = metrics._SAMPLE_STRIDE * metrics._MIN_SAMPLE + 123
    d = rng.binomial(8, 0.5, size=(4, n)).astype(np.uint8)
    d[1, ::3] = 0  # very skewed row
    for k in (1, 150, 5000):
        want = _lexsort_topk(d, k)
        np.testing.assert_array_equal(metrics._rank_topk(d, k, 8), want)
        np.testing.assert_array_equal(metrics._rank_topk(d, k, 8, thresholds=np.zeros(4)), want)
    np.testing.assert_array_equal(metrics._rank_topk(d[:, :50], 50, 8), _lexsort_topk(d[:, :50], 50))


def test_hamming_distances_against_bit_loop_and_table_fallback(monkeypatch):
    rng = np.random.default_rng(11)
    for bits in (5, 16, 40, 100, 300):
        q = np.where(rng.random((4, bits)) < 0.5, -1, 1)
        db = np.where(rng.random((9, bits)) < 0.5, -1, 1)
        want = (q[:, None, :] != db[None, :, :]).sum(-1)
        got = hamming_distances(as_packed(q)[0], as_packed(db)[0])
        assert got.dtype == (np.uint8 if bits <= 248 else np.uint16)
        np.testing.assert_array_equal(got, want)
        monkeypatch.setattr(codes_mod, '_HAS_BITWISE_COUNT', False)
        np.testing.assert_array_equal(hamming_distances(as_packed(q)[0], as_packed(db)[0]), want)
        monkeypatch.setattr(codes_mod, '_HAS_BITWISE_COUNT', True)


def test_as_packed_matches_numpy_packbits():
    signs = np.array([[1, -1, -1, 1, 1, 1, -1, 1, -1, 1]])
    packed, bits = as_packed(signs)
    assert bits == 10
    np.testing.assert_array_equal(packed, np.packbits(signs > 0, axis=1))
    assert as_packed(packed, 10)[1] == 10
    assert as_packed(packed)[1] == 16  # packed without bits: whole bytes


def test_unpacked_bits_in_uint8_are_named_not_read_silently():
    """Unpacked 0/1 bits in a uint8 array were read as packed codes of 8x the bits: the rankings survive, but
    ``bits`` and the PR curve's radii came out 8x too many, without a word."""
    import warnings

    rng = np.random.default_rng(0)
    unpacked = rng.integers(0, 2, (40, 16)).astype(np.uint8)
    labels = rng.integers(0, 3, 40)
    with pytest.warns(UserWarning, match='hold only 0 and 1: read as packed bits, 128 a code; .*np.packbits'):
        assert mean_average_precision(unpacked, unpacked, labels, labels).bits == 128
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert as_packed(np.packbits(unpacked, axis=1))[1] == 16  # packed: silent
        assert as_packed(np.zeros((40, 2), np.uint8))[1] == 16  # one collapsed code: packed all the same
        assert as_packed(unpacked, 128)[1] == 128  # bits given: taken as the caller says
    with pytest.raises(ValueError, match='codes must be a rectangular numeric array'):  # rows of two lengths
        as_packed([[1, -1, 1], [1, -1]])


# ------------------------------------------------------------------------------------------- bad input
Q8 = np.ones((2, 8), dtype=np.int8)
DB8 = -np.ones((3, 8), dtype=np.int8)
QL, DL = np.array([0, 1]), np.array([0, 1, 1])


@pytest.mark.parametrize(
    ('args', 'kwargs', 'match'),
    [
        ((Q8, np.ones((3, 16)), QL, DL), {}, r'query codes have 8 bits but database codes have 16'),
        ((Q8, np.ones((0, 8)), QL, DL[:0]), {}, r'database is empty'),
        ((Q8[:0], DB8, QL[:0], DL), {}, r'no queries'),
        ((Q8, DB8, QL, DL[:2]), {}, r'database labels have 2 rows but there are 3 database codes'),
        ((Q8, DB8, np.array([0, 1, 2]), DL), {}, r'query labels have 3 rows but there are 2 query codes'),
        ((Q8, DB8, np.ones((2, 5)), np.ones((3, 6))), {}, r'label widths differ: .* 5 columns, database labels 6'),
        ((Q8, DB8, np.ones((2, 5)), DL), {}, r'label widths differ'),
        ((Q8, DB8, QL, DL), {'topk': 0}, r'topk must be a positive integer'),
        ((Q8, DB8, QL, DL), {'topk': -5}, r'topk must be a positive integer'),
        ((np.zeros((2, 8)), DB8, QL, DL), {}, r'query codes: .*non-binary value 0'),
        ((Q8, np.full((3, 8), 0.3), QL, DL), {}, r'database codes: .*non-binary value 0\.3'),
        ((np.full((2, 8), np.nan), DB8, QL, DL), {}, r'NaN'),
        ((np.ones(8), DB8, QL, DL), {}, r'must be 2-D'),
        ((Q8 > 0, DB8, QL, DL), {}, r'boolean codes are ambiguous'),
        ((Q8, DB8, np.ones((2, 2)), np.ones((3, 2)) * 2), {}, r'database multi-hot labels must contain only 0 and 1'),
        ((Q8, DB8, QL.astype(float), DL), {}, r'class-index labels must be integers'),
        ((np.ones((2, 8), np.uint8), DB8, QL, DL), {}, r'packed codes for 8 bits need 1 uint8 columns, got 8'),
        ((Q8, DB8, QL, DL), {'bits': 16}, r'query codes: sign codes have 8 columns but bits=16'),
    ],
)
def test_bad_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mean_average_precision(*args, **kwargs)


def test_bad_parameters_raise_value_error():
    with pytest.raises(ValueError, match='every N in ns must be a positive integer'):
        precision_recall_at_n(Q8, DB8, QL, DL, ns=(5, 0))
    with pytest.raises(ValueError, match='ns is empty'):
        evaluate(Q8, DB8, QL, DL, ns=())
    with pytest.raises(ValueError, match='radius must be a non-negative integer'):
        hamming_radius_precision_recall(Q8, DB8, QL, DL, radius=-1)
    with pytest.raises(ValueError, match='chunk_size must be a positive integer'):
        mean_average_precision(Q8, DB8, QL, DL, chunk_size=0)
    with pytest.raises(ValueError, match='non-zero padding bits'):
        as_packed(np.array([[0xFF, 0xFF]], dtype=np.uint8), bits=12)
    with pytest.raises(ValueError, match='packed code widths differ'):
        hamming_distances(np.zeros((1, 2), np.uint8), np.zeros((1, 3), np.uint8))


def test_bfloat16_codes_score_as_their_float32_values():
    """Sign codes a bf16 model gave: numpy has no bfloat16, and tensor.numpy() refused them in every metric."""
    import torch

    from deephash_zoo.retrieval.metrics import mean_average_precision

    rng = np.random.default_rng(0)
    q, d = torch.randn(6, 16).sign(), torch.randn(30, 16).sign()
    ql, dl = np.eye(3)[rng.integers(0, 3, 6)], np.eye(3)[rng.integers(0, 3, 30)]
    as_bf16 = mean_average_precision(q.bfloat16(), d.bfloat16(), ql, dl)
    assert as_bf16.map == mean_average_precision(q.bfloat16().float(), d.bfloat16().float(), ql, dl).map
