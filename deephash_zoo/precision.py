"""Encoding precision: fp32, or bf16 / fp16 autocast where the hardware runs it natively and the codes agree.

A hash code is the sign of each output, so a lower precision is only a speed-up if it leaves the signs alone.
On a CPU with AMX (Intel Xeon 4th generation and later) PyTorch's bf16 autocast encoded dath_n_32 at 224,
batch 64, 1.85x faster than fp32 (issue 18's measurement); AVX512-BF16 alone (AMD Zen 4) has the
instructions but not the tile units; elsewhere bf16 is emulated and slower. ``'auto'`` therefore picks bf16
on AMX CPUs and fp16 on CUDA, and keeps it only if the first batch's signs agree with fp32's on at least
:data:`MIN_SIGN_AGREEMENT` of the bits (a model whose outputs sit near 0, such as random weights, falls back
to fp32); every other case encodes in fp32.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Callable, ContextManager, FrozenSet

import torch

__all__ = ['PRECISIONS', 'MIN_SIGN_AGREEMENT', 'cpu_flags', 'bf16_support', 'autocast', 'candidate_precision',
           'sign_agreement', 'choose_precision', 'relaxed_codes']

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


def autocast(precision: str, device_type: str) -> ContextManager:
    """The autocast context of ``precision`` on ``device_type`` (a no-op for fp32)."""
    if precision not in PRECISIONS[1:]:
        raise ValueError(f'precision must be one of {PRECISIONS[1:]} here, got {precision!r}')
    if precision == 'fp32':
        return nullcontext()
    if precision == 'fp16' and device_type == 'cpu':
        raise ValueError('precision fp16 is for CUDA; on a CPU use bf16 (or auto)')
    return torch.autocast(device_type, dtype=torch.bfloat16 if precision == 'bf16' else torch.float16)


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
        autocast(precision, device_type)  # refuses fp16 on a CPU before any work
        return precision
    candidate = candidate_precision(device_type)
    if candidate == 'fp32':
        return 'fp32'
    agree = sign_agreement(probe(candidate), probe('fp32'))
    return candidate if agree >= MIN_SIGN_AGREEMENT else 'fp32'


def relaxed_codes(model: torch.nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """The model's relaxed codes (every length) of ``x`` at ``precision``, as fp32: the auto choice's probe."""
    with torch.inference_mode(), autocast(precision, x.device.type):
        return model(x).float()
