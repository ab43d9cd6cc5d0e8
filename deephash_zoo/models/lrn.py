"""Local response normalisation across channels (CNN-F's norm1/norm2) at a fraction of torch's cost.

``torch.nn.LocalResponseNorm`` sums the squares over the channel window with ``avg_pool3d`` on a padded
copy and raises to ``-beta`` with ``pow``; on CPU, forward + backward of CNN-F's two LRN layers took
over a quarter of a training step at 224x224 (torch profiler). :class:`LocalResponseNorm` computes the
same function with shifted in-place adds over the channel dimension, ``rsqrt`` for the papers'
``beta = 0.75`` and a hand-written backward:

    d_c = k + alpha / n * sum_{j in W(c)} x_j^2,   y_c = x_c * d_c^-beta
    dL/dx_j = g_j * d_j^-beta - 2 * alpha * beta / n * x_j * sum_{c: j in W(c)} g_c * x_c * d_c^(-beta-1)

equal to torch's within float rounding (tested), in a few passes over the tensor instead of a pooling.
Graph exports and TorchScript take torch's own function (``deephash_zoo.export.onnx_lrn`` writes it as a
few ONNX element-wise ops). torch's LRN refuses bfloat16 / float16 on CPU outside autocast (no
``avg_pool3d`` kernel) and computes them in float32 under autocast, where it was 40% of admth_cnnf_multi's
bf16 encoding at batch 64 (Intel Xeon with AMX). Here a bfloat16 input runs the fast path in bfloat16 (float32's
range, so the squares cannot overflow; in admth_cnnf_multi's bf16 encoding at batch 64 it took 4.0 ms an
image against 5.5 with the LRN in float32, and the code signs agreed with fp32's on 99.78% of the bits against
99.82%), and a float16 input, whose squares overflow past 255, runs it in float32 and is cast back. Either way
the output keeps the input's dtype: under autocast the next layer would cast it down anyway.
"""
from typing import Any, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

__all__ = ['LocalResponseNorm']


def _window_sum(t: torch.Tensor, back: int, ahead: int) -> torch.Tensor:
    """``s[:, c] = sum(t[:, c - back : c + ahead + 1])`` over the channels that exist (zero padding)."""
    s = t.clone()
    for i in range(1, back + 1):
        s[:, i:] += t[:, :-i]
    for i in range(1, ahead + 1):
        s[:, :-i] += t[:, i:]
    return s


def _denominator_and_scale(x: torch.Tensor, size: int, alpha: float, beta: float, k: float
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``d`` and ``d ** -beta``; torch's window is ``size // 2`` channels back and ``(size - 1) // 2`` ahead."""
    d = _window_sum(x * x, size // 2, (size - 1) // 2).mul_(alpha / size).add_(k)
    if beta == 0.75:  # d^-0.75 = d^-0.5 * (d^-0.5)^0.5: two cheap roots instead of pow
        p = torch.rsqrt(d)
        p.mul_(torch.sqrt(p))
    else:
        p = d.pow(-beta)
    return d, p


class _LRNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        d, p = _denominator_and_scale(x, size, alpha, beta, k)
        ctx.save_for_backward(x, d, p)
        ctx.settings = (size, alpha, beta)
        return x * p

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> Tuple[Any, ...]:
        x, d, p = ctx.saved_tensors
        size, alpha, beta = ctx.settings
        t = g * x
        t.mul_(p).div_(d)
        # the transposed window: channel j is in W(c) for c from j - (size-1)//2 to j + size//2
        s = _window_sum(t, (size - 1) // 2, size // 2)
        s.mul_(x).mul_(2.0 * alpha * beta / size)
        return (g * p).sub_(s), None, None, None, None


@register_notrace_module  # reason: FX cannot trace the autograd Function; the traced graph keeps the module
class LocalResponseNorm(nn.LocalResponseNorm):
    """``torch.nn.LocalResponseNorm`` (same arguments, no weights) with a faster float32 path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and x.dim() == 4 and x.is_floating_point() and not self._exporting():
            if x.dtype in (torch.float32, torch.float64, torch.bfloat16):
                return self._fast(x)
            return self._fast(x.float()).to(x.dtype)  # float16: its squares would overflow
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    @torch.jit.unused
    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
        return x * _denominator_and_scale(x, self.size, self.alpha, self.beta, self.k)[1]

    @torch.jit.unused
    def _exporting(self) -> bool:
        # a jit trace records torch's own op too: the fast path's autograd Function differed from its no-grad ops
        # in trace's sanity check, and those in-place ops have no backward
        return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
