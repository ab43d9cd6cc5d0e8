"""Check an exported graph against PyTorch: max abs difference and the share of agreeing sign bits.

An export is only as good as the codes it produces, and codes are signs: a graph whose relaxed outputs
differ by 1e-6 but flip bits near 0 would change retrieval. Every graph is run on the same fixed inputs
as the PyTorch model: real Fashion-MNIST test images through the model's own eval transform (what a
deployment sees) and seeded random inputs at batch 1 and at a larger batch (the dynamic batch axis and
values outside the data's range). The figures are pooled over all of them and held to a threshold:

==========  ======================  =================  ==================================================
precision   sign agreement >=       max abs diff <=    why
==========  ======================  =================  ==================================================
fp32        0.999                   1e-3               same arithmetic up to summation order (we see 3e-7)
fp16        0.99                    5e-2               TensorRT fp16: 10-bit mantissa through ~10 layers
int8        0.98 on real images     (reported only)    4x fewer weight bytes; only the bits matter
==========  ======================  =================  ==================================================

Agreement is pooled over every bit of every input (e.g. 41 images x 32 bits), not per batch, so one
flipped bit of a single image cannot fail an export on its own. An int8 graph is held on the real images
only (see :class:`Thresholds`): its calibration fixes activation ranges for the data, and random inputs
outside them disagree by design; their agreement is still reported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from deephash_zoo.data import load_fashion_mnist
from deephash_zoo.retrieval.encoding import model_transform

from .onnx_export import INPUT_NAME, output_names, require

__all__ = ['Thresholds', 'FP32', 'FP16', 'INT8', 'VerificationError', 'fashion_mnist_batch', 'data_batch',
           'verification_inputs', 'torch_codes', 'create_session', 'onnx_codes', 'compare', 'verify_session', 'hold_to']


@dataclass(frozen=True)
class Thresholds:
    """What a graph must reach; ``max_abs_diff=None`` reports the difference without enforcing it.

    ``real_data_only``: hold the sign agreement on the real images alone (random inputs reported, not held).
    A calibrated int8 graph is built for its data's activation ranges; Gaussian noise lies outside them and
    gets clipped (the zoo's trained admth_cnnf_multi at 64x64: 0.987 on Fashion-MNIST, 0.84 / 0.91 on the
    random batches), which says nothing about the codes a deployment computes.
    """

    min_sign_agreement: float
    max_abs_diff: Optional[float]
    real_data_only: bool = False


FP32 = Thresholds(0.999, 1e-3)
FP16 = Thresholds(0.99, 5e-2)
INT8 = Thresholds(0.98, None, real_data_only=True)
RANDOM_PREFIX = 'random_'  # the verification inputs that are seeded noise, not images


class VerificationError(ValueError):
    """The graph disagrees with PyTorch beyond its threshold; the export is refused."""


def fashion_mnist_batch(model: nn.Module, img_size: int, split: str = 'test', start: int = 0, num: int = 32,
                        root: Optional[Union[str, Path]] = None) -> np.ndarray:
    """``num`` Fashion-MNIST images from ``start`` of ``split``, through the model's eval transform (float32)."""
    images, _ = load_fashion_mnist(split, root)
    if start + num > len(images):
        raise ValueError(f'asked for images {start}..{start + num} of the {split} split, which has {len(images)}')
    transform = model_transform(model, img_size)
    batch = [transform(Image.fromarray(img).convert('RGB')) for img in images[start:start + num]]
    return torch.stack(batch).numpy().astype(np.float32)


def data_batch(model: nn.Module, img_size: int, data: str = 'fashion-mnist', split: str = 'query', num: int = 32,
               root: Optional[Union[str, Path]] = None, at_most: bool = False) -> np.ndarray:
    """The first ``num`` images of a benchmark's ``'query'`` (test) or ``'database'`` (training) split, through
    the model's eval transform (float32): any ``--data`` name (``cifar10:DIR``, ``coco:PATH``, ``list:PATH``).
    ``at_most``: all of them where the split has fewer (a default count meeting a small own data set), instead of
    refusing."""
    if data == 'fashion-mnist':  # straight from the idx files: no protocol split to build
        return fashion_mnist_batch(model, img_size, 'test' if split == 'query' else 'train', 0, num, root)
    from deephash_zoo.data import build_retrieval_data

    if split not in ('query', 'database'):
        raise ValueError(f"split must be 'query' or 'database', got {split!r}")
    items = build_retrieval_data(data, root=None if root is None else str(root), seed=0,
                                 transform=model_transform(model, img_size))[split]
    if at_most:
        num = min(num, len(items))
    if num > len(items):
        raise ValueError(f'{data}: asked for {num} {split} images, the split has {len(items)}')
    return torch.stack([items[i][0] for i in range(num)]).numpy().astype(np.float32)


VERIFY_IMAGES = 32  # real test images every graph is checked on, unless asked otherwise


def verification_inputs(model: nn.Module, img_size: int, num_real: Optional[int] = None,
                        random_batches: Sequence[int] = (1, 8), seed: int = 0, root: Optional[Union[str, Path]] = None,
                        data: str = 'fashion-mnist') -> Dict[str, np.ndarray]:
    """The fixed inputs every graph is checked on: ``num_real`` test images of ``data`` (default
    :data:`VERIFY_IMAGES`, or every query where the split has fewer), then seeded random ones per batch size."""
    count, at_most = (VERIFY_IMAGES, True) if num_real is None else (num_real, False)
    inputs = {data: data_batch(model, img_size, data, 'query', count, root, at_most=at_most)}
    rng = np.random.default_rng(seed)
    chans = inputs[data].shape[1]
    for n in random_batches:
        inputs[f'random_b{n}'] = rng.standard_normal((n, chans, img_size, img_size), dtype=np.float32)
    return inputs


def torch_codes(model: nn.Module, inputs: Dict[str, np.ndarray], chunk: int = 16) -> Dict[str, np.ndarray]:
    """The model's relaxed codes (all lengths concatenated) for each input, in eval mode."""
    model.eval()
    out = {}
    with torch.inference_mode():
        for name, x in inputs.items():
            parts = [model(torch.from_numpy(x[i:i + chunk])).float().numpy() for i in range(0, len(x), chunk)]
            out[name] = np.concatenate(parts)
    return out


def create_session(path: Union[str, Path], providers: Optional[List[Any]] = None, threads: Optional[int] = None,
                   opt_level: str = 'all'):
    """An onnxruntime session (CPU unless ``providers`` says otherwise), quiet, with the given tuning."""
    ort = require('onnxruntime')
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are not the user's
    so.graph_optimization_level = {
        'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=providers or ['CPUExecutionProvider'])


def onnx_codes(session, inputs: Dict[str, np.ndarray], bits: Sequence[int], chunk: int = 16
               ) -> Tuple[Dict[str, np.ndarray], Optional[bool]]:
    """The graph's relaxed codes per input (outputs re-concatenated in ``bits`` order).

    Also whether its sign outputs, when it has them, are exactly the signs of its relaxed outputs
    (None without sign outputs). Outputs named otherwise than :func:`output_names` fail verification.
    """
    names = [o.name for o in session.get_outputs()]
    has_signs = any(n.startswith('signs') for n in names)
    expected = output_names(bits, has_signs)
    if names != expected or [i.name for i in session.get_inputs()] != [INPUT_NAME]:
        raise VerificationError(f'graph outputs {names} / inputs {[i.name for i in session.get_inputs()]}; '
                                f'expected {expected} / [{INPUT_NAME!r}]')
    out, signs_ok = {}, True if has_signs else None
    for key, x in inputs.items():
        parts = []
        for i in range(0, len(x), chunk):
            res = session.run(None, {INPUT_NAME: x[i:i + chunk]})
            codes = np.concatenate(res[:len(bits)], axis=1).astype(np.float32)
            if has_signs:
                signs = np.concatenate(res[len(bits):], axis=1)
                signs_ok = signs_ok and bool(np.array_equal(signs, np.where(codes >= 0, 1, -1).astype(np.int8)))
            parts.append(codes)
        out[key] = np.concatenate(parts)
    return out, signs_ok


def compare(reference: Dict[str, np.ndarray], candidate: Dict[str, np.ndarray], bits: Sequence[int]
            ) -> Dict[str, Any]:
    """Max abs difference and sign agreement per input, per length, and pooled over everything."""
    per_input, agree, total, worst = {}, 0, 0, 0.0
    per_len = {b: [0, 0] for b in bits}
    for key, ref in reference.items():
        got = candidate[key]
        if got.shape != ref.shape:
            raise VerificationError(f'{key}: graph output shape {got.shape}, PyTorch {ref.shape}')
        same = (ref >= 0) == (got >= 0)
        diff = float(np.abs(ref - got).max())
        per_input[key] = dict(batch=int(ref.shape[0]), max_abs_diff=diff, sign_agreement=float(same.mean()),
                              bits_compared=int(same.size))
        agree, total, worst = agree + int(same.sum()), total + int(same.size), max(worst, diff)
        start = 0
        for b in bits:
            per_len[b][0] += int(same[:, start:start + b].sum())
            per_len[b][1] += int(same[:, start:start + b].size)
            start += b
    return dict(max_abs_diff=worst, sign_agreement=agree / total, bits_compared=total,
                sign_agreement_per_length={str(b): a / n for b, (a, n) in per_len.items()}, inputs=per_input)


def verify_session(session, reference: Dict[str, np.ndarray], inputs: Dict[str, np.ndarray], bits: Sequence[int],
                   thresholds: Thresholds, label: str) -> Dict[str, Any]:
    """Run ``session`` on ``inputs``, compare with PyTorch's ``reference``; raise unless within ``thresholds``."""
    got, signs_ok = onnx_codes(session, inputs, bits)
    report = compare(reference, got, bits)
    report.update(graph=label, providers=list(session.get_providers()), sign_outputs_match=signs_ok)
    return hold_to(report, thresholds, label)


def hold_to(report: Dict[str, Any], thresholds: Thresholds, label: str) -> Dict[str, Any]:
    """Add the held figures to a :func:`compare` report and raise :class:`VerificationError` unless they pass."""
    held_on = [k for k in report['inputs'] if not (thresholds.real_data_only and k.startswith(RANDOM_PREFIX))]
    if not held_on:
        raise VerificationError(f'{label}: no real images to hold the int8 graph to')
    agree = sum(report['inputs'][k]['sign_agreement'] * report['inputs'][k]['bits_compared'] for k in held_on)
    held = agree / sum(report['inputs'][k]['bits_compared'] for k in held_on)
    report.update(thresholds=asdict(thresholds), held_sign_agreement=held, held_on=held_on)
    failures = []
    if held < thresholds.min_sign_agreement:
        failures.append(f'sign agreement {held:.4f} < {thresholds.min_sign_agreement}'
                        + (f' on {", ".join(held_on)}' if thresholds.real_data_only else ''))
    if thresholds.max_abs_diff is not None and not report['max_abs_diff'] <= thresholds.max_abs_diff:
        failures.append(f'max abs diff {report["max_abs_diff"]:.3g} > {thresholds.max_abs_diff}')
    if report.get('sign_outputs_match') is False:
        failures.append('sign outputs differ from the signs of the code outputs')
    report['passed'] = not failures
    if failures:
        raise VerificationError(f'{label}: disagrees with PyTorch ({"; ".join(failures)})')
    return report
