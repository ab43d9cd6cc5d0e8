"""Encoding precision: fp32, bf16 (CPU) or fp16 autocast (CUDA) where the hardware runs it natively and the codes agree.

A hash code is the sign of each output, so a lower precision is only a speed-up if it leaves the signs alone.
On a CPU with AMX (Intel Xeon 4th generation and later) PyTorch's bf16 autocast encoded dath_n_32 at 224,
batch 64, 1.85x faster than fp32 (issue 18's measurement); AVX512-BF16 alone (AMD Zen 4) has the
instructions but not the tile units; elsewhere bf16 is emulated and slower. Autocast casts every weight again
on every call, which at batch 1 costs more than the matrix products save (on an Intel Xeon with AMX,
dath_alexnet_32 took 87 ms an image against 36 in fp32), so bf16 on a CPU runs :func:`at_precision`'s copy of
the model with its weights cast once (20 ms), still under autocast, which keeps the attention energies in
fp32. ``'auto'`` therefore picks bf16 on AMX CPUs and fp16 on CUDA, and keeps it only if the first batch's
signs agree with fp32's on at least :data:`MIN_SIGN_AGREEMENT` of the bits (a model whose outputs sit near 0,
such as random weights, falls back to fp32); every other case encodes in fp32.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, ContextManager, FrozenSet

import torch
import torch.nn as nn

__all__ = ['PRECISIONS', 'MIN_SIGN_AGREEMENT', 'cpu_flags', 'bf16_support', 'autocast', 'at_precision',
           'precision_models', 'candidate_precision', 'sign_agreement', 'choose_precision', 'relaxed_codes']

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
MIN_SIGN_AGREEMENT = 0.99


@lru_cache(maxsize=1)
def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return frozenset(line.split(':', 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_support(flags: FrozenSet[str] | None = None) -> str:
    """``'amx'`` (tile units: bf16 pays), ``'avx512_bf16'`` (the instructions only) or ``'none'`` (emulated)."""
    flags = cpu_flags() if flags is None else flags
    if 'amx_bf16' in flags:
        return 'amx'
    return 'avx512_bf16' if 'avx512_bf16' in flags else 'none'


def _check(precision: str, device_type: str) -> None:
    if precision not in PRECISIONS[1:]:
        raise ValueError(f'precision must be one of {PRECISIONS[1:]} here, got {precision!r}')
    if precision == 'fp16' and device_type == 'cpu':
        raise ValueError('precision fp16 is for CUDA; on a CPU use bf16 (or auto)')


def autocast(precision: str, device_type: str) -> ContextManager:
    """The autocast context of ``precision`` on ``device_type`` (a no-op for fp32)."""
    _check(precision, device_type)
    if precision == 'fp32':
        return nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == 'bf16' else torch.float16)


class _Bfloat16Copy(nn.Module):
    """A bfloat16 copy of a model that takes and returns what the model does: inputs cast to bfloat16, floating
    outputs (relaxed codes, +-1 codes) back to float32; packed codes as they are."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = copy.deepcopy(model).to(torch.bfloat16).eval()

    def __getattr__(self, name: str) -> Any:  # bits, pretrained_cfg, ... of the model it copies
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules['inner'], name)

    @staticmethod
    def _out(y: torch.Tensor) -> torch.Tensor:
        return y.float() if y.is_floating_point() else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self.inner(x.to(torch.bfloat16)))

    def encode(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._out(self.inner.encode(x.to(torch.bfloat16), *args, **kwargs))


def at_precision(model: nn.Module, precision: str, device_type: str) -> nn.Module:
    """The module that encodes at ``precision`` (run it inside :func:`autocast`): ``model`` itself, or for bf16
    on a CPU a copy with bfloat16 weights that casts its inputs to bfloat16 and its codes back to float32."""
    _check(precision, device_type)
    return _Bfloat16Copy(model) if precision == 'bf16' and device_type == 'cpu' else model


def precision_models(model: nn.Module, device_type: str) -> Callable[[str], nn.Module]:
    """:func:`at_precision` for each precision asked, made once: the auto choice's probe and the encoding that
    follows share one bfloat16 copy."""
    made: dict = {}

    def at(precision: str) -> nn.Module:
        if precision not in made:
            made[precision] = at_precision(model, precision, device_type)
        return made[precision]
    return at


def candidate_precision(device_type: str, flags: FrozenSet[str] | None = None) -> str:
    """What ``'auto'`` tries before checking the signs: fp16 on CUDA, bf16 on an AMX CPU, else fp32."""
    if device_type == 'cuda':
        return 'fp16'
    return 'bf16' if device_type == 'cpu' and bf16_support(flags) == 'amx' else 'fp32'


def sign_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of code bits with the same sign (``>= 0`` is +1, as :meth:`encode`)."""
    return float(((a.float() >= 0) == (b.float() >= 0)).float().mean())


def choose_precision(precision: str, device_type: str, probe: Callable[[str], torch.Tensor]) -> str:
    """Resolve ``precision``: a fixed one is checked and returned; ``'auto'`` runs ``probe`` (relaxed codes of a
    first batch at a given precision) at fp32 and at the candidate, and keeps the candidate only when the signs
    agree on at least :data:`MIN_SIGN_AGREEMENT` of the bits."""
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision != 'auto':
        _check(precision, device_type)  # refuses fp16 on a CPU before any work
        return precision
    candidate = candidate_precision(device_type)
    if candidate == 'fp32':
        return 'fp32'
    agree = sign_agreement(probe(candidate), probe('fp32'))
    return candidate if agree >= MIN_SIGN_AGREEMENT else 'fp32'


def relaxed_codes(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """The relaxed codes (every length) of ``x`` at ``precision``, as fp32: the auto choice's probe. ``model`` is
    what :func:`at_precision` gives for ``precision``."""
    with torch.inference_mode(), autocast(precision, x.device.type):
        return model(x).float()
