"""DATH's objective (Eqs. 1-9 of the DATH paper): J = J1 + beta * J2 + gamma * J3.

J1 is DTSH's triplet likelihood over every valid in-batch triplet, J2 the classification loss of
the auxiliary label classifier on the hash layer, J3 the L1 quantisation loss.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .similarity import (
    OBJECTIVE_REDUCTIONS,
    REDUCTIONS,
    Reduction,
    as_multi_hot,
    check_batch,
    check_codes,
    check_reduction,
    label_similarity,
    non_negative,
)

__all__ = ['TripletLikelihoodLoss', 'ClassificationLoss', 'QuantizationLoss', 'DATHLoss', 'REDUCTIONS',
           'valid_triplets']


class TripletLikelihoodLoss(nn.Module):
    """J1 (Eqs. 1-4), DTSH's negative log triplet likelihood, over all valid in-batch triplets.

    Paper symbols: R_{a,p} = 1/2 b_a^T b_p (DTSH's Theta_ij; here on relaxed codes u in (-1, 1)),
    M the sigmoid, theta the margin (5 in the paper; ``margin`` here). For each triplet
    (a, p, n) with a != p, sim(a, p) and not sim(a, n) (sim = share at least one label):

        -log M(R_ap - R_an - theta) = softplus(-(R_ap - R_an - theta))

    computed with ``softplus`` so that |R| = 100 neither overflows nor loses the gradient.

    Reduction: the paper sums over the m triplets (Eq. 3); ``reduction='mean'`` (default) divides
    by m so the loss scale does not grow with B^3 and stays comparable to J2, J3. With no valid
    triplet (all items relevant to each other, or none to any other) the loss is 0, still attached
    to ``codes`` so ``backward`` works. Memory is one (B, B, B) tensor: 8 MB at B=128 in float32.
    """

    def __init__(self, margin: float = 5.0, reduction: Reduction = 'mean') -> None:
        super().__init__()
        self.margin = non_negative('margin', margin)
        self.reduction = check_reduction(reduction)

    def forward(self, codes: Tensor, labels: Tensor) -> Tensor:
        check_codes(codes)
        check_batch(labels, codes.shape[0], 'codes')
        valid = valid_triplets(labels, codes.device)
        r = 0.5 * codes @ codes.T
        x = r[:, :, None] - r[:, None, :] - self.margin  # R_ap - R_an - theta, indexed [a, p, n]
        per_triplet = torch.where(valid, F.softplus(-x), x.new_zeros(()))
        total = per_triplet.sum()
        if self.reduction == 'sum':
            return total
        return total / valid.sum().clamp(min=1).to(total.dtype)

    def extra_repr(self) -> str:
        return f'margin={self.margin}, reduction={self.reduction!r}'


def valid_triplets(labels: Tensor, device: torch.device | str | None = None) -> Tensor:
    """The (B, B, B) bool mask of J1's triplets [a, p, n]: a != p relevant to a, n irrelevant to a."""
    sim = label_similarity(labels).to(device)
    batch = sim.shape[0]
    not_self = ~torch.eye(batch, dtype=torch.bool, device=sim.device)
    positive = sim & not_self  # [a, p]
    negative = ~sim & not_self  # [a, n]; n != a only matters for unlabelled anchors, which have no p
    return positive[:, :, None] & negative[:, None, :]


class ClassificationLoss(nn.Module):
    """J2 (Eqs. 5-7): loss of the auxiliary label classifier, whose logits y come from the hash layer.

    * class indices l, shape (B,): softmax cross-entropy, Eq. 6.
    * multi-hot l, shape (B, c): ``multi_label_form='bce'`` (default, DESIGN.md's reading) is
      independent sigmoids, sum_j BCE(y[j], l[j]); ``'paper'`` is Eq. 7 as printed, on softmax
      probabilities p = softmax(y): -sum_j [l[j] log p[j] + (1 - l[j]) log(1 - p[j])], with
      log(1 - p[j]) = logsumexp_{t != j} y[t] - logsumexp_t y[t] (exact where p[j] -> 1).

    Normalisation: summed over classes (as G in the paper); over the batch, ``reduction='sum'`` sums as
    the paper does (Eq. 5, over b_s) and ``'mean'`` divides by B. Pass single-label data as indices to get
    Eq. 6; one-hot rows take the multi-label path.
    """

    def __init__(self, multi_label_form: Literal['bce', 'paper'] = 'bce', reduction: Reduction = 'mean') -> None:
        super().__init__()
        if multi_label_form not in ('bce', 'paper'):
            raise ValueError(f"multi_label_form must be 'bce' or 'paper', got {multi_label_form!r}")
        self.multi_label_form = multi_label_form
        self.reduction = check_reduction(reduction)

    def _reduce(self, per_item: Tensor) -> Tensor:
        return per_item.sum() if self.reduction == 'sum' else per_item.mean()

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        check_codes(logits, 'logits')
        check_batch(labels, logits.shape[0], 'logits')
        num_classes = logits.shape[1]
        if labels.dim() == 1:
            as_multi_hot(labels, num_classes)  # validates dtype and index range against the logits' classes
            return F.cross_entropy(logits, labels.long(), reduction=self.reduction)
        if labels.dim() != 2:
            raise ValueError(f'labels must be class indices (B,) or multi-hot (B, C); got rank {labels.dim()}')
        if labels.shape[1] != num_classes:
            raise ValueError(f'mismatched label widths: labels have {labels.shape[1]} columns, logits {num_classes}')
        as_multi_hot(labels)  # validates values in {0, 1} and NaN
        target = labels.to(logits.dtype)
        if self.multi_label_form == 'bce':
            per_item = F.binary_cross_entropy_with_logits(logits, target, reduction='none').sum(1)
            return self._reduce(per_item)
        if num_classes < 2:
            raise ValueError("multi_label_form='paper' needs at least 2 classes (softmax over one class is constant)")
        log_norm = torch.logsumexp(logits, dim=1, keepdim=True)
        log_p = logits - log_norm
        eye = torch.eye(num_classes, dtype=torch.bool, device=logits.device)
        others = logits[:, None, :].expand(-1, num_classes, -1).masked_fill(eye, float('-inf'))
        log_not_p = torch.logsumexp(others, dim=2) - log_norm  # log(1 - p_j)
        per_item = -(target * log_p + (1 - target) * log_not_p).sum(1)
        return self._reduce(per_item)

    def extra_repr(self) -> str:
        return f'multi_label_form={self.multi_label_form!r}, reduction={self.reduction!r}'


class QuantizationLoss(nn.Module):
    """J3 (Eq. 8): sum_j | |h[j]| - 1 |, pulling hash-layer outputs h towards {-1, +1}.

    Normalisation: summed over the k bits; over the batch, ``reduction='sum'`` sums as the paper does
    (over b_s) and ``'mean'`` divides by B.
    """

    def __init__(self, reduction: Reduction = 'mean') -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, h: Tensor) -> Tensor:
        check_codes(h, 'h')
        per_item = (h.abs() - 1).abs().sum(1)
        return per_item.sum() if self.reduction == 'sum' else per_item.mean()

    def extra_repr(self) -> str:
        return f'reduction={self.reduction!r}'


class DATHLoss(nn.Module):
    """DATH's total loss, Eq. 9: J = J1 + beta * J2 + gamma * J3 (paper: beta = 1, gamma = 0.01, theta = 5).

    ``forward(codes, logits, labels)``: ``codes`` are the relaxed hash codes (B, k) (the model's
    tanh output, used for both J1 and J3), ``logits`` the auxiliary label classifier's output
    (B, c) (a Linear on the hash layer), ``labels`` class indices (B,) or multi-hot (B, c).
    Returns ``{'loss', 'triplet', 'classification', 'quantization'}``; the last three are the
    unweighted J1, J2, J3 for logging.

    ``reduction='sum'`` is the paper's form: J1 summed over the m valid triplets, J2 and J3 over the
    batch (Eqs. 3, 5, 8). ``'mean'`` (the default) averages each instead, which keeps one learning rate
    usable across batch sizes but moves the weights: against J1, beta and gamma are effectively
    multiplied by m / B, the valid triplets per item (B = 128 with 10 balanced classes: each anchor has
    about 11.8 positives and 115.2 negatives, so m / B ~ 1,360). ``'scaled-sum'`` is the paper's sum
    divided by m: the paper's weights at J1's per-triplet scale (J = J1_mean + B / m (beta J2_mean +
    gamma J3_mean)); its logged terms are the per-triplet and per-item means.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 0.01,
        margin: float = 5.0,
        multi_label_form: Literal['bce', 'paper'] = 'bce',
        reduction: Reduction = 'mean',
    ) -> None:
        super().__init__()
        self.beta = non_negative('beta', beta)
        self.gamma = non_negative('gamma', gamma)
        self.reduction = check_reduction(reduction, OBJECTIVE_REDUCTIONS)
        terms = 'mean' if reduction == 'scaled-sum' else reduction  # scaled-sum reweights the means in forward
        self.triplet = TripletLikelihoodLoss(margin=margin, reduction=terms)
        self.classification = ClassificationLoss(multi_label_form=multi_label_form, reduction=terms)
        self.quantization = QuantizationLoss(reduction=terms)

    def forward(self, codes: Tensor, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        check_codes(codes)
        check_codes(logits, 'logits')
        if logits.shape[0] != codes.shape[0]:
            raise ValueError(f'logits batch size ({logits.shape[0]}) does not match codes ({codes.shape[0]})')
        j1 = self.triplet(codes, labels)
        j2 = self.classification(logits, labels)
        j3 = self.quantization(codes)
        items_per_triplet = 1.0
        if self.reduction == 'scaled-sum':  # (sum J1 + beta sum J2 + gamma sum J3) / m, from the means
            m = valid_triplets(labels, codes.device).sum().clamp(min=1).to(codes.dtype)
            items_per_triplet = codes.shape[0] / m
        return {
            'loss': j1 + items_per_triplet * (self.beta * j2 + self.gamma * j3),
            'triplet': j1,
            'classification': j2,
            'quantization': j3,
        }

    def extra_repr(self) -> str:
        return f'beta={self.beta}, gamma={self.gamma}, reduction={self.reduction!r}'
