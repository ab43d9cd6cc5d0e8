"""ADMTH's objective (Eqs. 5-9 of the ADMTH paper): alpha * pairwise likelihood per branch + beta * consistency.

The pairwise term is DPSH's negative log likelihood of the label similarities; the consistency term
ties the codes of adjacent-length branches together through learned linear maps Q_k. An optional label
term (``label_weight``, off in the paper's form) is not the paper's: see :class:`BranchLabelLoss`.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dath import ClassificationLoss
from .similarity import (
    OBJECTIVE_REDUCTIONS,
    Reduction,
    check_batch,
    check_codes,
    check_reduction,
    label_similarity,
    non_negative,
)

__all__ = ['PairwiseLikelihoodLoss', 'ConsistencyLoss', 'BranchLabelLoss', 'ADMTHLoss']


class PairwiseLikelihoodLoss(nn.Module):
    """PLoss (Eqs. 5-7), DPSH's negative log pairwise likelihood.

    Paper symbols: phi_ij = 1/2 <b_i, b_j> (here on relaxed codes u in (-1, 1)), xi the sigmoid,
    s_ij = 1 when items i and j share a label. -log p(s_ij | B) = log(1 + e^phi_ij) - s_ij phi_ij,
    written as ``softplus(phi) - s * phi`` so that |phi| = 100 is exact and finite.

    Normalisation over the B (B - 1) ordered pairs i != j: ``reduction='sum'`` sums as the paper does
    (over S), ``'mean'`` divides by their count. A batch of one item has no pair: the loss is 0, still
    attached to ``codes``.

    ``pair_balance`` (not in the paper; 0, the default, is its loss): with 10 classes 90% of a batch's pairs
    are dissimilar and their terms outweigh the similar pairs' 9 to 1. At 1 each pair is weighed so that
    similar and dissimilar pairs carry half the total weight each (HashNet's weighting, Cao et al. 2017, scaled
    so that the weights average 1 and the loss keeps its scale); in between, ``1 + pair_balance * (w - 1)``.
    A batch whose pairs are all of one kind keeps weight 1.
    """

    def __init__(self, reduction: Reduction = 'mean', pair_balance: float = 0.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.pair_balance = _check_balance(pair_balance)

    def forward(self, codes: Tensor, labels: Tensor) -> Tensor:
        check_codes(codes)
        check_batch(labels, codes.shape[0], 'codes')
        batch = codes.shape[0]
        s = label_similarity(labels).to(device=codes.device, dtype=codes.dtype)
        phi = 0.5 * codes @ codes.T
        off_diag = ~torch.eye(batch, dtype=torch.bool, device=codes.device)
        per_pair = torch.where(off_diag, F.softplus(phi) - s * phi, phi.new_zeros(()))
        if self.pair_balance:
            per_pair = per_pair * self._pair_weights(s, off_diag)
        if self.reduction == 'sum':
            return per_pair.sum()
        return per_pair.sum() / max(batch * (batch - 1), 1)

    def _pair_weights(self, s: Tensor, off_diag: Tensor) -> Tensor:
        """Each pair's weight: similar and dissimilar pairs half the total each, blended by ``pair_balance``."""
        similar = (s > 0) & off_diag
        n_similar, n_pairs = similar.sum().to(s.dtype), off_diag.sum().to(s.dtype)  # float64 codes: float64 weights
        n_dissimilar = n_pairs - n_similar
        if n_similar == 0 or n_dissimilar == 0:
            return s.new_ones(())
        balanced = torch.where(similar, n_pairs / (2 * n_similar), n_pairs / (2 * n_dissimilar))
        return 1 + self.pair_balance * (balanced - 1)

    def extra_repr(self) -> str:
        balance = f', pair_balance={self.pair_balance}' if self.pair_balance else ''
        return f'reduction={self.reduction!r}{balance}'


class ConsistencyLoss(nn.Module):
    """CLoss (Eq. 8): sum_k ||H_{k+1} - Q_k(H_k)||^2 over adjacent code lengths L_k < L_{k+1}.

    The paper says Q maps H_{k+1} to H_k but writes H_{k+1} - Q_k^T H_k, i.e. a map from the
    shorter code into the longer one; we take the formula: ``Q_k = Linear(L_k, L_{k+1}, bias=False)``
    applied to the shorter branch's tanh output. The Q_k are parameters of this module, learned
    jointly with the network. Normalisation: squared L2 norm summed over bits and over the K - 1
    adjacent pairs; over the batch, ``reduction='sum'`` sums (the paper's Frobenius norm over H) and
    ``'mean'`` divides by B. With one code length there is no pair and the loss is 0.
    """

    def __init__(self, bits: Sequence[int] = (16, 32, 48, 64), reduction: Reduction = 'mean') -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.reduction = check_reduction(reduction)
        self.maps = nn.ModuleList(nn.Linear(short, long, bias=False) for short, long in pairwise(self.bits))

    def forward(self, codes: Sequence[Tensor]) -> Tensor:
        """``codes``: one (B, L_k) tensor per code length, in the order of ``bits``."""
        if len(codes) != len(self.bits):
            raise ValueError(f'expected {len(self.bits)} code tensors (bits={self.bits}), got {len(codes)}')
        for k, (h, width) in enumerate(zip(codes, self.bits, strict=True)):
            check_codes(h, f'codes[{k}]')
            if h.shape != (codes[0].shape[0], width):
                raise ValueError(f'codes[{k}] has shape {tuple(h.shape)}, expected (B={codes[0].shape[0]}, {width})')
        total = codes[0].new_zeros(codes[0].shape[0])
        for q, (short, long) in zip(self.maps, pairwise(codes), strict=True):
            total = total + (long - q(short)).pow(2).sum(1)
        if not self.maps:  # keep a graph to the codes so backward works with a single length
            total = total + 0 * codes[0].sum(1)
        return total.sum() if self.reduction == 'sum' else total.mean()

    def extra_repr(self) -> str:
        return f'bits={self.bits}, reduction={self.reduction!r}'


class BranchLabelLoss(nn.Module):
    """A label classifier on each branch's codes (not in the ADMTH paper; DATH's J2, Eqs. 5-7 of DATH).

    Why: the pairwise likelihood only asks that codes of one class agree more than codes of two; a
    linear classifier on the codes also asks that each class sit on its own side of a hyperplane, as
    DATH's J2 does. On Fashion-MNIST its gain for ADMTH was small (README, Train). The classifiers
    (``Linear(L_k, C)``, one per code length) are parameters of this module, not of the model: the
    checkpoint keeps the paper's architecture, and only the trainer sees them. Summed over branches; over the batch,
    ``reduction`` as :class:`~deephash_zoo.losses.dath.ClassificationLoss` (softmax cross-entropy for
    class indices, binary cross-entropy summed over labels for multi-hot labels).
    """

    def __init__(self, bits: Sequence[int], num_labels: int, reduction: Reduction = 'mean') -> None:
        super().__init__()
        if int(num_labels) < 2:
            raise ValueError(f'the label term needs at least 2 labels, got num_labels={num_labels}')
        self.bits = _check_bits(bits)
        self.num_labels = int(num_labels)
        self.classifiers = nn.ModuleList(nn.Linear(width, self.num_labels) for width in self.bits)
        self.classification = ClassificationLoss(reduction=reduction)

    def forward(self, codes: Sequence[Tensor], labels: Tensor) -> Tensor:
        """``codes``: one (B, L_k) tensor per code length, in the order of ``bits``."""
        if len(codes) != len(self.bits):
            raise ValueError(f'expected {len(self.bits)} code tensors (bits={self.bits}), got {len(codes)}')
        return sum((self.classification(fc(h), labels) for fc, h in zip(self.classifiers, codes, strict=True)),
                   codes[0].new_zeros(()))

    def extra_repr(self) -> str:
        return f'bits={self.bits}, num_labels={self.num_labels}'


class ADMTHLoss(nn.Module):
    """ADMTH's total loss, Eq. 9: alpha * sum_k PLoss(H_k) + beta * CLoss (paper: alpha = 20, beta = 1).

    ``forward(codes, labels)``: ``codes`` is (B, sum(bits)), the per-length tanh codes concatenated
    in ascending length order (what the ADMTH models return); ``labels`` class indices (B,) or
    multi-hot (B, C). Returns ``{'loss', 'pairwise', 'consistency'}``, the last two unweighted
    (pairwise summed over branches) for logging.

    This module has parameters (the consistency maps Q_k): the trainer must pass
    ``loss.parameters()`` to the optimiser along with the model's, and move it to the same device.

    ``reduction='sum'`` is the paper's form (pairs summed over S, consistency over the batch);
    ``'mean'`` (the default) averages both, which weighs the consistency term B - 1 times more
    against the pairwise term than the paper does (127x at B = 128). ``'scaled-sum'`` is the paper's sum
    divided by the B (B - 1) pairs: the paper's weights at a per-pair scale (alpha * pairwise_mean + beta *
    consistency_mean / (B - 1)); its logged terms are the per-pair and per-item means.

    ``label_weight`` > 0 adds ``label_weight * BranchLabelLoss`` (per-item mean under ``'mean'`` and
    ``'scaled-sum'``, summed under ``'sum'``; logged as ``'label'``), which needs ``num_labels``. It is not
    in the paper: 0, the default, is the paper's objective. So is ``pair_balance`` (see
    :class:`PairwiseLikelihoodLoss`; ``--loss-arg pair_balance=1``).
    """

    def __init__(self, bits: Sequence[int] = (16, 32, 48, 64), alpha: float = 20.0, beta: float = 1.0,
                 label_weight: float = 0.0, num_labels: int | None = None, reduction: Reduction = 'mean',
                 pair_balance: float = 0.0) -> None:
        super().__init__()
        self.bits = _check_bits(bits)
        self.alpha = non_negative('alpha', alpha)
        self.beta = non_negative('beta', beta)
        self.label_weight = float(label_weight)
        if not self.label_weight >= 0:
            raise ValueError(f'label_weight must be >= 0 (0: the paper\'s objective), got {label_weight}')
        self.reduction = check_reduction(reduction, OBJECTIVE_REDUCTIONS)
        terms = 'mean' if reduction == 'scaled-sum' else reduction  # scaled-sum reweights the means in forward
        self.pairwise = PairwiseLikelihoodLoss(terms, pair_balance)
        self.consistency = ConsistencyLoss(self.bits, terms)
        self.label: BranchLabelLoss | None = None
        if self.label_weight > 0:
            if num_labels is None:
                raise ValueError('label_weight > 0 needs num_labels (the classes of the label classifiers)')
            self.label = BranchLabelLoss(self.bits, num_labels, terms)

    def forward(self, codes: Tensor, labels: Tensor) -> dict[str, Tensor]:
        check_codes(codes)
        if codes.shape[1] != sum(self.bits):
            raise ValueError(
                f'codes have width {codes.shape[1]} but bits={self.bits} sum to {sum(self.bits)}; '
                'expected the per-length codes concatenated in ascending length order'
            )
        check_batch(labels, codes.shape[0], 'codes')
        branches = torch.split(codes, list(self.bits), dim=1)
        pairwise = sum((self.pairwise(h, labels) for h in branches), codes.new_zeros(()))
        consistency = self.consistency(branches)
        # scaled-sum: (alpha sum_pairs + beta sum_items) / (B (B - 1)), from the means
        items_per_pair = 1.0 / max(codes.shape[0] - 1, 1) if self.reduction == 'scaled-sum' else 1.0
        terms = {
            'loss': self.alpha * pairwise + items_per_pair * self.beta * consistency,
            'pairwise': pairwise,
            'consistency': consistency,
        }
        if self.label is not None:
            terms['label'] = self.label(branches, labels)
            terms['loss'] = terms['loss'] + self.label_weight * terms['label']
        return terms

    def extra_repr(self) -> str:
        label = f', label_weight={self.label_weight}' if self.label is not None else ''
        balance = f', pair_balance={self.pairwise.pair_balance}' if self.pairwise.pair_balance else ''
        return f'bits={self.bits}, alpha={self.alpha}, beta={self.beta}{label}{balance}, reduction={self.reduction!r}'


def _check_balance(pair_balance: float) -> float:
    balance = float(pair_balance)
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f'pair_balance must be in [0, 1] (0: the paper\'s pairwise likelihood), got {pair_balance}')
    return balance


def _check_bits(bits: Sequence[int] | int) -> tuple[int, ...]:
    """``bits`` as a tuple of ascending positive ints (one int: one length); a str or a fraction is refused, where
    ``int()`` would read '16' as (1, 6) and 16.7 as 16."""
    bits = (bits,) if isinstance(bits, (int, np.integer)) else bits
    if isinstance(bits, (str, bytes)) or not isinstance(bits, Sequence) or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bits):
        raise ValueError(f'bits must be a sequence of integer code lengths, e.g. (16, 32, 48, 64); got {bits!r}')
    bits = tuple(int(b) for b in bits)
    if not bits or any(b <= 0 for b in bits):
        raise ValueError(f'bits must be a non-empty sequence of positive code lengths, got {bits}')
    if any(a >= b for a, b in pairwise(bits)):
        raise ValueError(f'bits must be strictly ascending (shorter -> longer), got {bits}')
    return bits
