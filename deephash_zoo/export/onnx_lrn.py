"""Local response normalisation in exported graphs as a few ONNX element-wise ops.

Without help the exporter decomposes ``torch.nn.functional.local_response_norm`` into ``Pow``, a padded
``AveragePool`` over the channels and a second ``Pow``. ONNX Runtime runs that pooling slowly on CPU: in
CNN-F's graph at 224x224 (2 threads, Intel Xeon) the two LRN layers took 11 of the 18 ms an int8 image
took, and 11 of 42 in fp32. ONNX's own ``LRN`` op was no faster (4.5 ms for the two). Written as shifted
slices of the channel-padded squares, added up, they take about 1.6 ms, with torch's window (``size // 2``
channels back, ``(size - 1) // 2`` ahead) for every size. :func:`lrn_as_onnx_op` swaps every LRN module of a
model for one that calls a custom op, and :data:`TRANSLATION` tells the exporter how to write that op.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['OnnxLocalResponseNorm', 'TRANSLATION', 'lrn_as_onnx_op']


@torch.library.custom_op('deephash::local_response_norm', mutates_args=())
def _local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """torch's LRN, as one op the exporter sees whole."""
    return F.local_response_norm(x, size, alpha, beta, k)


@_local_response_norm.register_fake
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


def _lrn_onnx(x: Any, size: int, alpha: float, beta: float, k: float) -> Any:
    """The op's ONNX form, traced by onnxscript: the window's sum of squares as ``size`` shifted slices of a
    channel-padded copy added up, then ``x * d ** -beta`` (``d ** -0.75`` as two square roots)."""
    from onnxscript import opset18 as op

    back, ahead = size // 2, (size - 1) // 2
    squares = op.Pad(op.Mul(x, x), op.Constant(value_ints=[0, back, 0, 0, 0, ahead, 0, 0]))
    channels = op.Shape(x, start=1, end=2)
    axis = op.Constant(value_ints=[1])
    total = None
    for i in range(size):
        shift = op.Constant(value_ints=[i])
        part = op.Slice(squares, shift, op.Add(channels, shift), axis)
        total = part if total is None else op.Add(total, part)
    d = op.Add(op.Mul(total, op.Constant(value_float=alpha / size)), op.Constant(value_float=k))
    if beta == 0.75:
        root = op.Sqrt(d)
        scale = op.Reciprocal(op.Mul(root, op.Sqrt(root)))
    else:
        scale = op.Pow(d, op.Constant(value_float=-beta))
    return op.Mul(x, scale)


TRANSLATION: Dict[Any, Callable[..., Any]] = {torch.ops.deephash.local_response_norm.default: _lrn_onnx}


class OnnxLocalResponseNorm(nn.LocalResponseNorm):
    """``nn.LocalResponseNorm`` that the exporter writes as :data:`TRANSLATION` says."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.deephash.local_response_norm(x, self.size, float(self.alpha), float(self.beta),
                                                      float(self.k))


def lrn_as_onnx_op(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.LocalResponseNorm`` replaced by :class:`OnnxLocalResponseNorm`: a copy of its
    module tree that shares its parameters and buffers (no weights copied), or ``model`` itself if it has none."""
    if not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules()):
        return model
    shared = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    model = copy.deepcopy(model, memo=shared)
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.LocalResponseNorm) and not isinstance(child, OnnxLocalResponseNorm):
                setattr(parent, name, OnnxLocalResponseNorm(child.size, child.alpha, child.beta, child.k))
    return model
