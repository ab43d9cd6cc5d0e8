"""Tie-aware AP (He et al., CVPR 2018): the exact expectation of AP over every order of tied items."""
import itertools

import numpy as np
import pytest

from deephash_zoo.retrieval import evaluate, mean_average_precision, tie_aware_mean_average_precision
from deephash_zoo.retrieval.tie_aware import tie_aware_average_precision


def _ap(relevance) -> float:
    rel = np.asarray(relevance, dtype=bool)
    if not rel.any():
        return 0.0
    ranks = np.flatnonzero(rel) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def _brute_force(distances, relevant) -> float:
    """AP averaged over every ordering of each tie group (all permutations, so tiny cases only)."""
    groups = [[i for i in range(len(distances)) if distances[i] == d] for d in sorted(set(distances))]
    total, count = 0.0, 0
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        ranking = [i for order in orders for i in order]
        total += _ap([relevant[i] for i in ranking])
        count += 1
    return total / count


def _hist(distances, relevant, bits):
    h = np.zeros((1, bits + 1, 2), dtype=np.int64)
    for d, r in zip(distances, relevant, strict=True):
        h[0, d, int(r)] += 1
    return h


@pytest.mark.parametrize('seed', range(12))
def test_equals_the_average_over_all_tie_orders(seed):
    rng = np.random.default_rng(seed)
    n, bits = int(rng.integers(2, 8)), 3
    distances = rng.integers(0, bits + 1, n).tolist()
    relevant = (rng.random(n) < 0.5).tolist()
    expected = _brute_force(distances, relevant)
    assert tie_aware_average_precision(_hist(distances, relevant, bits))[0] == pytest.approx(expected, abs=1e-12)


def test_without_ties_it_is_the_usual_ap_and_without_relevant_items_zero():
    distances, relevant = [0, 1, 2, 3, 4], [False, True, False, True, True]
    assert tie_aware_average_precision(_hist(distances, relevant, 4))[0] == pytest.approx(_ap(relevant))
    assert tie_aware_average_precision(_hist(distances, [False] * 5, 4))[0] == 0.0
    with pytest.raises(ValueError, match=r'\(queries, bits \+ 1, 2\)'):
        tie_aware_average_precision(np.zeros((2, 5)))


def test_codes_api_matches_per_query_brute_force_and_evaluate():
    rng = np.random.default_rng(3)
    bits = 4
    q = np.where(rng.random((5, bits)) < 0.5, 1, -1)
    db = np.where(rng.random((7, bits)) < 0.5, 1, -1)
    ql, dl = rng.integers(0, 2, 5), rng.integers(0, 2, 7)
    result = tie_aware_mean_average_precision(q, db, ql, dl)
    for i in range(5):
        distances = ((bits - q[i] @ db.T) // 2).tolist()
        assert result.per_query[i] == pytest.approx(_brute_force(distances, (dl == ql[i]).tolist()))
    assert evaluate(q, db, ql, dl)['map_tie_aware'] == pytest.approx(result.map)
    # distinct distances everywhere: no ties, the usual mAP
    q1, db1 = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [1, -1, -1, -1]])
    ql1, dl1 = np.array([0]), np.array([1, 0, 0, 1])
    assert tie_aware_mean_average_precision(q1, db1, ql1, dl1).map == pytest.approx(
        mean_average_precision(q1, db1, ql1, dl1).map)
