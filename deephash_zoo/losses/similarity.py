"""Label relevance used by every loss (relevant = share at least one label), and shared input checks.

This is the NUS-WIDE / MS-COCO protocol both papers follow; for single-label data it reduces to
"same class".
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ['label_similarity', 'as_multi_hot', 'check_codes', 'check_batch', 'check_reduction', 'non_negative',
           'REDUCTIONS', 'OBJECTIVE_REDUCTIONS', 'Reduction']

Reduction = Literal['mean', 'sum', 'scaled-sum']
REDUCTIONS = ('mean', 'sum')  # 'sum': the papers' sums over triplets, pairs and items; 'mean': averages
# A whole objective (DATHLoss, ADMTHLoss) also takes 'scaled-sum': the papers' sums divided by the count of the
# first term's elements (triplets, pairs): the papers' relative weights at a scale that does not grow with B.
OBJECTIVE_REDUCTIONS = ('mean', 'sum', 'scaled-sum')


def check_reduction(reduction: str, allowed: tuple = REDUCTIONS) -> str:
    """Return ``reduction`` if it is one of ``allowed``, else raise ValueError naming them."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {', '.join(repr(r) for r in allowed)}, got {reduction!r}")
    return reduction


def non_negative(name: str, value: float) -> float:
    """``value`` as a float if it is finite and >= 0, else ValueError: every weight and margin of the papers'
    losses is; a negative weight would maximise its term, a negative margin ask for nothing."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f'{name} must be a finite number >= 0, got {value}')
    return value


def as_multi_hot(labels: Tensor, num_classes: int | None = None, name: str = 'labels') -> Tensor:
    """Validate ``labels`` (indices (B,) or multi-hot (B, C)) and return them as a (B, C) bool matrix.

    ``num_classes`` fixes C for class indices (default: max index + 1); it is not checked for multi-hot.
    Raises ValueError naming the problem (rank, dtype, values outside {0, 1}, NaN, index range).
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f'{name} must be a torch.Tensor, got {type(labels).__name__}')
    if labels.dim() == 1:
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f'{name} has rank 1, so it must hold integer class indices, got dtype {labels.dtype}')
        if labels.numel() and int(labels.min()) < 0:
            raise ValueError(f'{name} holds negative class indices (min {int(labels.min())})')
        width = num_classes if num_classes is not None else int(labels.max()) + 1 if labels.numel() else 0
        if labels.numel() and int(labels.max()) >= width:
            raise ValueError(f'{name} holds class index {int(labels.max())}, outside the {width} label columns')
        return torch.nn.functional.one_hot(labels.long(), width).bool()
    if labels.dim() != 2:
        raise ValueError(f'{name} must be class indices (B,) or multi-hot (B, C); got rank {labels.dim()}')
    if labels.is_complex():
        raise ValueError(f'{name} must be real-valued multi-hot labels, got dtype {labels.dtype}')
    if labels.is_floating_point() and bool(torch.isnan(labels).any()):
        raise ValueError(f'{name} contains NaN')
    if labels.dtype != torch.bool and bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(f'{name} is multi-hot (rank 2) but has values outside {{0, 1}}')
    return labels.bool()


def label_similarity(labels_a: Tensor, labels_b: Tensor | None = None) -> Tensor:
    """Return the (B_a, B_b) bool matrix ``S[i, j] = labels_a[i] and labels_b[j] share a label``.

    Labels are either class indices, shape (B,) and integer, or multi-hot, shape (B, C) with
    values in {0, 1} (bool, integer or float). ``labels_b`` defaults to ``labels_a``. Indices and
    multi-hot may be mixed (indices are expanded to the other side's C columns). An item with no
    label is relevant to nothing, itself included.

    Raises:
        ValueError: wrong rank, values outside {0, 1}, NaN, negative or out-of-range class indices,
            or multi-hot widths that differ.
    """
    same = labels_b is None
    if same:
        labels_b = labels_a
    rank_a = labels_a.dim() if isinstance(labels_a, Tensor) else None
    rank_b = labels_b.dim() if isinstance(labels_b, Tensor) else None
    if rank_a == 1 and rank_b == 1:  # both class indices: plain equality, no (B, C) matrix needed
        as_multi_hot(labels_a, name='labels_a')
        if not same:
            as_multi_hot(labels_b, name='labels_b')
        return labels_a[:, None] == labels_b[None, :]
    width_a = labels_a.shape[1] if rank_a == 2 else None
    width_b = labels_b.shape[1] if rank_b == 2 else None
    if width_a is not None and width_b is not None and width_a != width_b:
        raise ValueError(f'mismatched label widths: labels_a has {width_a} columns, labels_b has {width_b}')
    a = as_multi_hot(labels_a, width_b, 'labels_a')
    b = a if same else as_multi_hot(labels_b, width_a, 'labels_b')
    # Counts of shared labels are small integers, exact in float32; matmul keeps memory at O(B_a * B_b).
    return (a.float() @ b.float().T) > 0


def check_codes(codes: Tensor, name: str = 'codes') -> None:
    """Raise ValueError unless ``codes`` is a non-empty floating (B, k) tensor."""
    if not isinstance(codes, Tensor) or codes.dim() != 2:
        rank = codes.dim() if isinstance(codes, Tensor) else type(codes).__name__
        raise ValueError(f'{name} must be a (B, k) tensor, got rank {rank}')
    if not codes.is_floating_point():
        raise ValueError(f'{name} must be floating point, got dtype {codes.dtype}')
    if codes.shape[0] == 0:
        raise ValueError(f'{name} is an empty batch')


def check_batch(labels: Tensor, batch: int, what: str) -> None:
    """Raise ValueError unless ``labels`` has ``batch`` rows."""
    if not isinstance(labels, Tensor):
        raise ValueError(f'labels must be a torch.Tensor, got {type(labels).__name__}')
    if labels.dim() == 0 or labels.shape[0] != batch:
        n = labels.shape[0] if labels.dim() else 'a scalar'
        raise ValueError(f'labels batch size ({n}) does not match {what} batch size ({batch})')
