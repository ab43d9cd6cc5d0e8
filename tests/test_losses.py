"""The losses of DATH and ADMTH against literal, loop-based readings of the papers' equations."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from deephash_zoo.losses import (
    ADMTHLoss,
    BranchLabelLoss,
    ClassificationLoss,
    ConsistencyLoss,
    DATHLoss,
    PairwiseLikelihoodLoss,
    QuantizationLoss,
    TripletLikelihoodLoss,
    label_similarity,
)

TOL = {'rel': 1e-6, 'abs': 1e-6}
LABEL_KINDS = ['single', 'multi']


# ----------------------------------------------------------------------------------------------------------------
# Slow references: plain Python over i, j (and triplets), straight from the equations.
# ----------------------------------------------------------------------------------------------------------------
def ref_sim(labels: torch.Tensor, i: int, j: int) -> bool:
    if labels.dim() == 1:
        return int(labels[i]) == int(labels[j])
    return any(labels[i, c] == 1 and labels[j, c] == 1 for c in range(labels.shape[1]))


def dot(u: torch.Tensor, i: int, j: int) -> float:
    return sum(float(u[i, d]) * float(u[j, d]) for d in range(u.shape[1]))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > -30 else x - math.log1p(math.exp(x))


def ref_triplet(u: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[float, int]:
    """Eqs. 2-4: sum over triplets of -log M(R_ap - R_an - theta), and the number m of triplets."""
    total, m = 0.0, 0
    for a, p, n in itertools.product(range(u.shape[0]), repeat=3):
        if a != p and ref_sim(labels, a, p) and not ref_sim(labels, a, n):
            total -= log_sigmoid(0.5 * dot(u, a, p) - 0.5 * dot(u, a, n) - margin)
            m += 1
    return total, m


def ref_classification(y: torch.Tensor, labels: torch.Tensor, form: str) -> float:
    """Eqs. 5-7, averaged over the batch; 'bce' is the sigmoid reading of Eq. 7."""
    total = 0.0
    for i in range(y.shape[0]):
        row = [float(v) for v in y[i]]
        z = sum(math.exp(v) for v in row)
        if labels.dim() == 1:  # Eq. 6
            total -= math.log(math.exp(row[int(labels[i])]) / z)
            continue
        for j, v in enumerate(row):
            lj = float(labels[i, j])
            q = math.exp(v) / z if form == 'paper' else 1 / (1 + math.exp(-v))
            total -= lj * math.log(q) + (1 - lj) * math.log(1 - q)
    return total / y.shape[0]


def ref_quantization(h: torch.Tensor) -> float:
    """Eq. 8, averaged over the batch."""
    return sum(abs(abs(float(h[i, j])) - 1) for i in range(h.shape[0]) for j in range(h.shape[1])) / h.shape[0]


def ref_pairwise(u: torch.Tensor, labels: torch.Tensor) -> float:
    """Eq. 7 of ADMTH with phi_ij = 1/2 <b_i, b_j> (Eq. 6), averaged over pairs i != j."""
    b = u.shape[0]
    total = 0.0
    for i, j in itertools.product(range(b), repeat=2):
        if i != j:
            phi = 0.5 * dot(u, i, j)
            total += math.log(1 + math.exp(phi)) - float(ref_sim(labels, i, j)) * phi
    return total / (b * (b - 1))


def ref_consistency(codes: list[torch.Tensor], weights: list[torch.Tensor]) -> float:
    """Eq. 8 of ADMTH, ||H_{k+1} - Q_k H_k||^2 per item, summed over k, averaged over the batch."""
    b = codes[0].shape[0]
    total = 0.0
    for (short, long), w in zip(itertools.pairwise(codes), weights, strict=True):
        for i in range(b):
            for r in range(long.shape[1]):
                mapped = sum(float(w[r, c]) * float(short[i, c]) for c in range(short.shape[1]))
                total += (float(long[i, r]) - mapped) ** 2
    return total / b


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def make_labels(kind: str, batch: int, num_classes: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == 'single':
        return torch.randint(0, num_classes, (batch,), generator=g)
    labels = (torch.rand(batch, num_classes, generator=g) < 0.3).double()  # float multi-hot; some rows may be empty
    labels[0] = 0
    labels[0, 0] = 1  # make sure at least one pair relevant...
    labels[1] = 0
    labels[1, 0] = 1
    labels[2] = 0
    labels[2, 1] = 1  # ...and one item irrelevant to both
    return labels


def make_codes(batch: int, bits: int, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(2 * torch.randn(batch, bits, generator=g, dtype=torch.float64)).requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------------------------------
# label_similarity
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_label_similarity_matches_definition(kind: str) -> None:
    labels = make_labels(kind, 9, 4, seed=1)
    s = label_similarity(labels)
    assert s.dtype == torch.bool and s.shape == (9, 9)
    assert s.tolist() == [[ref_sim(labels, i, j) for j in range(9)] for i in range(9)]


def test_label_similarity_cross_and_mixed() -> None:
    idx = torch.tensor([0, 2, 1])
    multi = torch.tensor([[1, 0, 1], [0, 1, 0]])
    assert label_similarity(idx, multi).tolist() == [[True, False], [True, False], [False, True]]
    assert label_similarity(multi, idx).tolist() == [[True, True, False], [False, False, True]]
    one_hot = torch.nn.functional.one_hot(idx, 3)
    assert torch.equal(label_similarity(idx), label_similarity(one_hot))


def test_item_without_labels_is_relevant_to_nothing() -> None:
    s = label_similarity(torch.tensor([[0, 0], [1, 1]]))
    assert s.tolist() == [[False, False], [False, True]]


@pytest.mark.parametrize(
    ('labels_a', 'labels_b', 'match'),
    [
        (torch.zeros(2, 2, 2), None, 'rank 3'),
        (torch.tensor([[0, 2], [1, 0]]), None, r'outside \{0, 1\}'),
        (torch.tensor([[0.0, float('nan')], [1.0, 0.0]]), None, 'NaN'),
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1, 0]]), 'mismatched label widths'),
        (torch.tensor([0.0, 1.0]), None, 'integer class indices'),
        (torch.tensor([0, -1]), None, 'negative'),
        (torch.tensor([0, 3]), torch.tensor([[0, 1, 0]]), 'class index 3'),
        ([0, 1], None, 'torch.Tensor'),
    ],
)
def test_label_similarity_rejects_bad_labels(labels_a, labels_b, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        label_similarity(labels_a, labels_b)


# ----------------------------------------------------------------------------------------------------------------
# DATH: J1, J2, J3 and their sum
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', LABEL_KINDS)
@pytest.mark.parametrize('seed', [0, 1])
def test_triplet_matches_paper(kind: str, seed: int) -> None:
    u = make_codes(8, 12, seed) * 3  # spread R over a few units so the margin matters
    labels = make_labels(kind, 8, 3, seed)
    total, m = ref_triplet(u, labels, margin=5.0)
    assert m > 0
    assert TripletLikelihoodLoss(margin=5.0)(u, labels).item() == pytest.approx(total / m, **TOL)
    assert TripletLikelihoodLoss(margin=2.0, reduction='sum')(u, labels).item() == pytest.approx(
        ref_triplet(u, labels, margin=2.0)[0], **TOL
    )


@pytest.mark.parametrize('kind', LABEL_KINDS)
@pytest.mark.parametrize('form', ['bce', 'paper'])
def test_classification_matches_paper(kind: str, form: str) -> None:
    g = torch.Generator().manual_seed(3)
    y = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    labels = make_labels(kind, 7, 5, seed=3)
    assert ClassificationLoss(form)(y, labels).item() == pytest.approx(ref_classification(y, labels, form), **TOL)


def test_classification_forms_differ_on_multi_label() -> None:
    y = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, 1]])
    assert ClassificationLoss('bce')(y, labels).item() != pytest.approx(ClassificationLoss('paper')(y, labels).item())


def test_quantization_matches_paper() -> None:
    h = 1.5 * make_codes(6, 10, seed=4)
    assert QuantizationLoss()(h).item() == pytest.approx(ref_quantization(h), **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_dath_total_is_weighted_sum(kind: str) -> None:
    u = 3 * make_codes(8, 8, seed=5)
    labels = make_labels(kind, 8, 4, seed=5)
    y = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = DATHLoss(beta=0.7, gamma=0.3, margin=4.0, multi_label_form='paper')(u, y, labels)
    assert set(out) == {'loss', 'triplet', 'classification', 'quantization'}
    total, m = ref_triplet(u, labels, margin=4.0)
    j1, j2, j3 = total / m, ref_classification(y, labels, 'paper'), ref_quantization(u)
    assert out['triplet'].item() == pytest.approx(j1, **TOL)
    assert out['classification'].item() == pytest.approx(j2, **TOL)
    assert out['quantization'].item() == pytest.approx(j3, **TOL)
    assert out['loss'].item() == pytest.approx(j1 + 0.7 * j2 + 0.3 * j3, **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_gradcheck_dath_terms(kind: str) -> None:
    labels = make_labels(kind, 6, 3, seed=6)
    u = make_codes(6, 8, seed=6, requires_grad=True)
    assert gradcheck(lambda c: TripletLikelihoodLoss(margin=1.0)(3 * c, labels), (u,))
    y = torch.randn(6, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64, requires_grad=True)
    for form in ('bce', 'paper'):
        assert gradcheck(lambda logits, f=form: ClassificationLoss(f)(logits, labels), (y,))
    # away from the kinks of | |h| - 1 | at h = 0 and |h| = 1
    g = torch.Generator().manual_seed(6)
    magnitude = torch.where(torch.rand(6, 8, generator=g) < 0.5, 0.2, 1.2) + 0.6 * torch.rand(6, 8, generator=g)
    sign = torch.where(torch.rand(6, 8, generator=g) < 0.5, -1.0, 1.0)
    h = (sign * magnitude).double().requires_grad_(True)
    assert gradcheck(QuantizationLoss(), (h,))


def test_triplet_is_stable_at_large_inner_products() -> None:
    # float32, where exp(100) overflows: R_ap = -100, R_an = +100 for anchor 0; for anchor 1, R_10 = R_12 = -100.
    c = math.sqrt(200.0)
    u = torch.tensor([[c, 0.0], [-c, 0.0], [c, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss = TripletLikelihoodLoss(margin=5.0)(u, labels)
    expected = (205.0 + math.log1p(math.exp(5.0))) / 2  # softplus(205) -> 205 exactly in float32, softplus(5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    # The other side: every triplet far inside the margin -> loss -> 0, not NaN.
    u = torch.tensor([[c, 0.0], [c, 0.0], [-c, 0.0]], requires_grad=True)
    loss = TripletLikelihoodLoss(margin=5.0)(u, labels)
    assert 0.0 <= loss.item() < 1e-30
    loss.backward()
    assert torch.isfinite(u.grad).all()


def test_paper_classification_is_stable_at_large_logits() -> None:
    y = torch.tensor([[100.0, 0.0, -100.0], [100.0, 0.0, -100.0]], requires_grad=True)
    labels = torch.tensor([[1, 0, 0], [0, 1, 0]])
    # row 0: p = (1, e^-100, e^-200) -> every term -> 0; row 1: -log(1 - p0) - log p1 = 100 + 100.
    loss = ClassificationLoss('paper')(y, labels)
    assert loss.item() == pytest.approx((0.0 + 200.0) / 2, rel=1e-6)
    loss.backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize(
    'labels',
    [
        torch.tensor([2, 2, 2, 2, 2]),  # all relevant: no negative
        torch.tensor([0, 1, 2, 3, 4]),  # none relevant: no positive
        torch.tensor([[1, 1, 0], [0, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 0]]),  # all share label 1
        torch.tensor([3]),  # single item
    ],
)
def test_no_valid_triplet_gives_zero_with_graph(labels: torch.Tensor) -> None:
    u = make_codes(labels.shape[0], 8, seed=7, requires_grad=True)
    for reduction in ('mean', 'sum'):
        loss = TripletLikelihoodLoss(reduction=reduction)(u, labels)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(u.grad, torch.zeros_like(u))
        u.grad = None


def test_triplet_at_paper_batch_size() -> None:
    u = torch.tanh(torch.randn(128, 64, generator=torch.Generator().manual_seed(8))).requires_grad_(True)
    labels = torch.rand(128, 21, generator=torch.Generator().manual_seed(8)) < 0.1
    loss = TripletLikelihoodLoss()(u, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------------
# ADMTH: pairwise, consistency, total
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_pairwise_matches_paper(kind: str) -> None:
    u = 2 * make_codes(9, 16, seed=9)
    labels = make_labels(kind, 9, 3, seed=9)
    assert PairwiseLikelihoodLoss()(u, labels).item() == pytest.approx(ref_pairwise(u, labels), **TOL)


def ref_balanced_pairwise(u: torch.Tensor, labels: torch.Tensor, balance: float) -> float:
    """The pairwise term with similar and dissimilar pairs weighed half the total each, blended by ``balance``,
    averaged over pairs i != j: a literal loop over the pairs."""
    b = u.shape[0]
    pairs = [(i, j) for i, j in itertools.product(range(b), repeat=2) if i != j]
    n_similar = sum(bool(ref_sim(labels, i, j)) for i, j in pairs)
    n_dissimilar = len(pairs) - n_similar
    total = 0.0
    for i, j in pairs:
        similar = bool(ref_sim(labels, i, j))
        phi = 0.5 * dot(u, i, j)
        full = len(pairs) / (2 * (n_similar if similar else n_dissimilar)) if n_similar and n_dissimilar else 1.0
        total += (1 + balance * (full - 1)) * (math.log(1 + math.exp(phi)) - float(similar) * phi)
    return total / len(pairs)


@pytest.mark.parametrize('kind', LABEL_KINDS)
@pytest.mark.parametrize('balance', [0.0, 0.5, 1.0])
def test_pair_balance_matches_a_literal_weighted_sum(kind: str, balance: float) -> None:
    u = 2 * make_codes(9, 16, seed=9)
    labels = make_labels(kind, 9, 3, seed=9)
    got = PairwiseLikelihoodLoss(pair_balance=balance)(u, labels).item()
    assert got == pytest.approx(ref_balanced_pairwise(u, labels, balance), **TOL)
    if balance == 0.0:  # the paper's term, bit for bit
        assert got == PairwiseLikelihoodLoss()(u, labels).item()
    summed = PairwiseLikelihoodLoss('sum', pair_balance=balance)(u, labels).item()
    assert summed == pytest.approx(ref_balanced_pairwise(u, labels, balance) * 9 * 8, **TOL)


def test_pair_balance_weights_keep_float64() -> None:
    """The pair counts were divided as integers into float32 weights: float64 codes lost 4e-8 relative."""
    u = 2 * make_codes(7, 8, seed=3)  # float64
    labels = torch.tensor([0, 0, 1, 2, 3, 4, 5])
    got = PairwiseLikelihoodLoss(pair_balance=1.0)(u, labels).item()
    assert got == pytest.approx(ref_balanced_pairwise(u, labels, 1.0), rel=1e-12)


def test_pair_balance_weighs_similar_and_dissimilar_pairs_equally() -> None:
    """With 2 similar ordered pairs among 20, each kind carries half the total weight (20 / 4 and 20 / 36); a batch of
    one kind of pair keeps weight 1; ADMTHLoss passes it on; values outside [0, 1] are refused."""
    labels = torch.tensor([0, 0, 1, 2, 3])
    u = make_codes(5, 8, seed=3)
    loss = PairwiseLikelihoodLoss(pair_balance=1.0)
    s = (labels[:, None] == labels[None, :]).double()
    off = ~torch.eye(5, dtype=torch.bool)
    w = loss._pair_weights(s, off)
    assert w[0, 1].item() == pytest.approx(20 / 4) and w[0, 2].item() == pytest.approx(20 / 36)
    assert (w * (s > 0) * off).sum().item() == pytest.approx((w * (s == 0) * off).sum().item())
    distinct = torch.arange(5)
    assert PairwiseLikelihoodLoss(pair_balance=1.0)(u, distinct).item() == PairwiseLikelihoodLoss()(u, distinct).item()
    admth = ADMTHLoss((4, 8), pair_balance=0.5)
    assert admth.pairwise.pair_balance == 0.5 and 'pair_balance=0.5' in repr(admth)
    for bad in (-0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='pair_balance must be in'):
            PairwiseLikelihoodLoss(pair_balance=bad)


def test_consistency_matches_paper() -> None:
    bits = (4, 6, 9)
    module = ConsistencyLoss(bits).double()
    codes = [make_codes(7, b, seed=10 + b) for b in bits]
    weights = [q.weight.detach() for q in module.maps]
    assert [tuple(w.shape) for w in weights] == [(6, 4), (9, 6)]  # shorter -> longer
    assert module(codes).item() == pytest.approx(ref_consistency(codes, weights), **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_admth_total(kind: str) -> None:
    bits = (4, 6, 8)
    loss_fn = ADMTHLoss(bits, alpha=3.0, beta=0.5).double()
    labels = make_labels(kind, 7, 3, seed=11)
    branches = [make_codes(7, b, seed=20 + b) for b in bits]
    out = loss_fn(torch.cat(branches, dim=1), labels)
    assert set(out) == {'loss', 'pairwise', 'consistency'}
    pairwise = sum(ref_pairwise(h, labels) for h in branches)
    consistency = ref_consistency(branches, [q.weight.detach() for q in loss_fn.consistency.maps])
    assert out['pairwise'].item() == pytest.approx(pairwise, **TOL)
    assert out['consistency'].item() == pytest.approx(consistency, **TOL)
    assert out['loss'].item() == pytest.approx(3.0 * pairwise + 0.5 * consistency, **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_gradcheck_admth_terms(kind: str) -> None:
    labels = make_labels(kind, 6, 3, seed=12)
    u = make_codes(6, 8, seed=12, requires_grad=True)
    assert gradcheck(lambda c: PairwiseLikelihoodLoss()(3 * c, labels), (u,))
    bits = (3, 5)
    module = ConsistencyLoss(bits).double()
    short, long = make_codes(4, 3, seed=13, requires_grad=True), make_codes(4, 5, seed=14, requires_grad=True)
    weight = module.maps[0].weight.detach().clone().requires_grad_(True)
    assert gradcheck(lambda a, b, w: functional_call(module, {'maps.0.weight': w}, ([a, b],)), (short, long, weight))


def test_pairwise_is_stable_at_large_inner_products() -> None:
    c = math.sqrt(200.0)  # phi = +-100, where exp overflows float32
    cases = [  # (second code sign, same label, analytic loss per pair)
        (1.0, True, 0.0),  # softplus(100) - 100 -> 0
        (1.0, False, 100.0),  # softplus(100) -> 100
        (-1.0, True, 100.0),  # softplus(-100) + 100 -> 100
        (-1.0, False, 0.0),  # softplus(-100) -> 0
    ]
    for sign, same, expected in cases:
        u = torch.tensor([[c, 0.0], [sign * c, 0.0]], requires_grad=True)
        labels = torch.tensor([0, 0 if same else 1])
        loss = PairwiseLikelihoodLoss()(u, labels)
        assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-30)
        loss.backward()
        assert torch.isfinite(u.grad).all()


def test_pairwise_without_similar_pair_and_single_item() -> None:
    u = make_codes(5, 8, seed=15, requires_grad=True)
    labels = torch.arange(5)
    loss = PairwiseLikelihoodLoss()(u, labels)
    assert loss.item() == pytest.approx(ref_pairwise(u.detach(), labels), **TOL)
    loss.backward()
    assert torch.isfinite(u.grad).all() and u.grad.abs().sum() > 0
    one = make_codes(1, 8, seed=15, requires_grad=True)
    loss = PairwiseLikelihoodLoss()(one, torch.tensor([0]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(one.grad, torch.zeros_like(one))


def test_consistency_maps_receive_gradient() -> None:
    loss_fn = ADMTHLoss()
    assert sum(p.numel() for p in loss_fn.parameters()) == 16 * 32 + 32 * 48 + 48 * 64
    codes = torch.tanh(torch.randn(4, 160, generator=torch.Generator().manual_seed(16)))
    loss_fn(codes, torch.tensor([0, 1, 0, 2]))['loss'].backward()
    for q in loss_fn.consistency.maps:
        assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0


def test_single_length_has_zero_consistency() -> None:
    loss_fn = ADMTHLoss(bits=(32,))
    assert list(loss_fn.parameters()) == []
    codes = torch.tanh(torch.randn(4, 32, generator=torch.Generator().manual_seed(17))).requires_grad_(True)
    out = loss_fn(codes, torch.tensor([0, 1, 0, 2]))
    assert out['consistency'].item() == 0.0
    assert out['loss'].item() == pytest.approx(20.0 * out['pairwise'].item(), rel=1e-6)
    out['loss'].backward()
    assert torch.isfinite(codes.grad).all()


@pytest.mark.parametrize('kind', LABEL_KINDS)
@pytest.mark.parametrize('reduction', ['mean', 'scaled-sum', 'sum'])
def test_admth_label_term_adds_a_classifier_per_branch(kind: str, reduction: str) -> None:
    """label_weight * sum_k J2(W_k h_k + c_k): DATH's classification loss on each branch's codes."""
    bits, batch = (4, 6), 7
    labels = make_labels(kind, batch, 3, seed=31)
    branches = [make_codes(batch, b, seed=30 + b) for b in bits]
    plain = ADMTHLoss(bits, reduction=reduction).double()
    with_label = ADMTHLoss(bits, label_weight=0.5, num_labels=3, reduction=reduction).double()
    with_label.consistency.load_state_dict(plain.consistency.state_dict())
    codes = torch.cat(branches, dim=1)
    base, out = plain(codes, labels), with_label(codes, labels)
    assert 'label' not in base and set(out) == {'loss', 'pairwise', 'consistency', 'label'}
    per_item = 1 if reduction == 'sum' else batch  # ref_classification averages over the batch
    expected = sum(ref_classification(fc(h).detach(), labels, 'bce') * batch / per_item
                   for fc, h in zip(with_label.label.classifiers, branches, strict=True))
    assert out['label'].item() == pytest.approx(expected, **TOL)
    assert out['loss'].item() == pytest.approx(base['loss'].item() + 0.5 * expected, **TOL)


def test_admth_label_term_is_off_in_the_papers_form_and_trains_its_classifiers() -> None:
    assert ADMTHLoss(num_labels=10).label is None  # label_weight 0: no classifier, the paper's objective
    loss_fn = ADMTHLoss(bits=(16, 32), label_weight=1.0, num_labels=3)
    assert [tuple(fc.weight.shape) for fc in loss_fn.label.classifiers] == [(3, 16), (3, 32)]
    codes = torch.tanh(torch.randn(4, 48, generator=torch.Generator().manual_seed(32))).requires_grad_(True)
    loss_fn(codes, torch.tensor([0, 1, 0, 2]))['loss'].backward()
    assert all(fc.weight.grad.abs().sum() > 0 for fc in loss_fn.label.classifiers)
    with pytest.raises(ValueError, match='needs num_labels'):
        ADMTHLoss(label_weight=1.0)
    with pytest.raises(ValueError, match='label_weight must be >= 0'):
        ADMTHLoss(label_weight=-1.0, num_labels=3)
    with pytest.raises(ValueError, match='at least 2 labels'):
        BranchLabelLoss((16,), num_labels=1)


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors() -> None:
    codes = torch.zeros(4, 8)
    labels = torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match='width 100 but bits'):
        ADMTHLoss()(torch.zeros(4, 100), labels)
    with pytest.raises(ValueError, match='ascending'):
        ADMTHLoss(bits=(32, 16))
    with pytest.raises(ValueError, match='batch size'):
        TripletLikelihoodLoss()(codes, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='rank 1'):
        PairwiseLikelihoodLoss()(torch.zeros(8), labels)
    with pytest.raises(ValueError, match='rank 3'):
        PairwiseLikelihoodLoss()(codes, torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match=r'outside \{0, 1\}'):
        DATHLoss()(codes, torch.zeros(4, 3), torch.full((4, 3), 2.0))
    with pytest.raises(ValueError, match='mismatched label widths'):
        ClassificationLoss()(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match='class index 7'):
        ClassificationLoss()(torch.zeros(4, 3), torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match='NaN'):
        ClassificationLoss('paper')(torch.zeros(2, 3), torch.tensor([[1.0, float('nan'), 0.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match='reduction'):
        TripletLikelihoodLoss(reduction='max')
    with pytest.raises(ValueError, match='multi_label_form'):
        ClassificationLoss('softmax')
    with pytest.raises(ValueError, match=r'expected \(B=4, 16\)'):
        ConsistencyLoss((16, 32))([torch.zeros(4, 8), torch.zeros(4, 32)])


# ----------------------------------------------------------------------------------------------------------------
# The papers' summed form (reduction='sum') against literal sums; 'mean' is the sum over its count
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_dath_sum_form_is_the_papers_sums(kind: str) -> None:
    """Eq. 9 with Eq. 3 (J1 over the m triplets), Eq. 5 (J2 over b_s) and Eq. 8 (J3 over b_s), all summed."""
    batch = 8
    u = 3 * make_codes(batch, 8, seed=31)
    labels = make_labels(kind, batch, 4, seed=31)
    y = torch.randn(batch, 4, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    out = DATHLoss(beta=0.7, gamma=0.3, margin=4.0, reduction='sum')(u, y, labels)
    j1, m = ref_triplet(u, labels, margin=4.0)
    j2 = batch * ref_classification(y, labels, 'bce')  # the reference averages over items
    j3 = batch * ref_quantization(u)
    assert out['triplet'].item() == pytest.approx(j1, **TOL)
    assert out['classification'].item() == pytest.approx(j2, **TOL)
    assert out['quantization'].item() == pytest.approx(j3, **TOL)
    assert out['loss'].item() == pytest.approx(j1 + 0.7 * j2 + 0.3 * j3, **TOL)
    mean = DATHLoss(beta=0.7, gamma=0.3, margin=4.0, reduction='mean')(u, y, labels)
    assert mean['triplet'].item() == pytest.approx(j1 / m, **TOL)
    assert mean['classification'].item() == pytest.approx(j2 / batch, **TOL)
    assert mean['quantization'].item() == pytest.approx(j3 / batch, **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_admth_sum_form_is_the_papers_sums(kind: str) -> None:
    """Eq. 9 with Eq. 7 summed over the ordered pairs i != j and Eq. 8 summed over the batch."""
    bits, batch = (4, 6, 8), 7
    mean_fn = ADMTHLoss(bits, alpha=3.0, beta=0.5).double()
    sum_fn = ADMTHLoss(bits, alpha=3.0, beta=0.5, reduction='sum').double()
    sum_fn.load_state_dict(mean_fn.state_dict())  # the same Q_k
    labels = make_labels(kind, batch, 3, seed=32)
    branches = [make_codes(batch, b, seed=40 + b) for b in bits]
    pairs = batch * (batch - 1)
    pairwise = sum(ref_pairwise(h, labels) for h in branches) * pairs  # the reference averages over pairs
    consistency = ref_consistency(branches, [q.weight.detach() for q in sum_fn.consistency.maps]) * batch
    out = sum_fn(torch.cat(branches, dim=1), labels)
    assert out['pairwise'].item() == pytest.approx(pairwise, **TOL)
    assert out['consistency'].item() == pytest.approx(consistency, **TOL)
    assert out['loss'].item() == pytest.approx(3.0 * pairwise + 0.5 * consistency, **TOL)
    mean = mean_fn(torch.cat(branches, dim=1), labels)
    assert mean['pairwise'].item() == pytest.approx(pairwise / pairs, **TOL)
    assert mean['consistency'].item() == pytest.approx(consistency / batch, **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_dath_scaled_sum_is_the_papers_sum_over_the_triplets(kind: str) -> None:
    """'scaled-sum': Eq. 9 summed as in the paper, divided by m; the logged terms are the means."""
    batch = 8
    u = 3 * make_codes(batch, 8, seed=33)
    labels = make_labels(kind, batch, 4, seed=33)
    y = torch.randn(batch, 4, generator=torch.Generator().manual_seed(33), dtype=torch.float64)
    out = DATHLoss(beta=0.7, gamma=0.3, margin=4.0, reduction='scaled-sum')(u, y, labels)
    j1, m = ref_triplet(u, labels, margin=4.0)
    j2 = batch * ref_classification(y, labels, 'bce')
    j3 = batch * ref_quantization(u)
    assert m > 0
    assert out['loss'].item() == pytest.approx((j1 + 0.7 * j2 + 0.3 * j3) / m, **TOL)
    assert out['triplet'].item() == pytest.approx(j1 / m, **TOL)
    assert out['quantization'].item() == pytest.approx(j3 / batch, **TOL)


@pytest.mark.parametrize('kind', LABEL_KINDS)
def test_admth_scaled_sum_is_the_papers_sum_over_the_pairs(kind: str) -> None:
    """'scaled-sum': Eq. 9 summed as in the paper, divided by the B (B - 1) ordered pairs."""
    bits, batch = (4, 6, 8), 7
    sum_fn = ADMTHLoss(bits, alpha=3.0, beta=0.5, reduction='sum').double()
    scaled_fn = ADMTHLoss(bits, alpha=3.0, beta=0.5, reduction='scaled-sum').double()
    scaled_fn.load_state_dict(sum_fn.state_dict())
    labels = make_labels(kind, batch, 3, seed=34)
    codes = torch.cat([make_codes(batch, b, seed=50 + b) for b in bits], dim=1)
    pairs = batch * (batch - 1)
    summed, scaled = sum_fn(codes, labels), scaled_fn(codes, labels)
    assert scaled['loss'].item() == pytest.approx(summed['loss'].item() / pairs, **TOL)
    assert scaled['pairwise'].item() == pytest.approx(summed['pairwise'].item() / pairs, **TOL)
    assert scaled['consistency'].item() == pytest.approx(summed['consistency'].item() / batch, **TOL)


def test_scaled_sum_is_for_whole_objectives_only() -> None:
    """A single term has no 'first term' to scale by: it takes 'mean' or 'sum' and says so."""
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', got 'scaled-sum'"):
        PairwiseLikelihoodLoss(reduction='scaled-sum')
    assert ADMTHLoss(reduction='scaled-sum').reduction == 'scaled-sum'


def test_unknown_reduction_is_named() -> None:
    for make in (lambda: QuantizationLoss(reduction='avg'), lambda: PairwiseLikelihoodLoss(reduction='avg')):
        with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', got 'avg'"):
            make()
    for make in (lambda: DATHLoss(reduction='avg'), lambda: ADMTHLoss(reduction='avg')):
        with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'scaled-sum', got 'avg'"):
            make()


@pytest.mark.parametrize('bits', ['16', (16.7, 32), (True,), None])
def test_admth_loss_refuses_lengths_that_are_not_integers(bits):
    with pytest.raises(ValueError, match='bits must be a sequence of integer code lengths'):
        ADMTHLoss(bits=bits)  # '16' became (1, 6) and 16.7 became 16


def test_admth_loss_takes_one_length_as_an_int():
    assert ADMTHLoss(bits=32).bits == (32,)
