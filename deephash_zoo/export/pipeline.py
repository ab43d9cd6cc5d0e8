"""A verified export, all or nothing: graphs are built and checked in a hidden temporary folder inside
``out_dir`` and renamed into place only when every requested graph has passed verification.

``out_dir`` then holds ``<model>.onnx`` (fp32), ``<model>.int8.onnx`` (``int8=...``), ``<model>.trt/``
(TensorRT engine cache, ``tensorrt=True``) and ``verification.json``, which keeps one entry per graph file
(an export adds or replaces its own entries)::

    {"schema_version": 1,
     "graphs": {"dath_alexnet_32.onnx": {"model": ..., "precision": "fp32", "img_size": 224, "bits": [32],
                 "weights_sha256": ..., "weights_sha256_of": ..., "max_abs_diff": 2.4e-07,
                 "sign_agreement": 1.0, "sign_agreement_per_length": {"32": 1.0}, "bits_compared": 1312,
                 "inputs": {"fashion-mnist": {...}, "random_b1": {...}, "random_b8": {...}},
                 "thresholds": {...}, "passed": true, "providers": [...], "package_version": ...}}}

A failed verification raises :class:`~.verify.VerificationError` and leaves ``out_dir`` as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import deephash_zoo
from deephash_zoo.utils import remove_dead_temporaries, replace_dir, temporary_name

from .onnx_export import ExportError, ModelSource, export_onnx, require
from .quantize import INT8_MODES, quantize_int8
from .tensorrt import require_tensorrt, tensorrt_session
from .verify import (
    FP16,
    FP32,
    INT8,
    VerificationError,
    create_session,
    data_batch,
    torch_codes,
    verification_inputs,
    verify_session,
)

__all__ = ['ExportResult', 'check_requirements', 'prepare_out_dir', 'export_verified', 'VERIFICATION_FILE']

VERIFICATION_FILE = 'verification.json'
SCHEMA_VERSION = 1
Progress = Optional[Callable[[str], None]]


@dataclass
class ExportResult:
    """What was written (final paths) and each graph's verification report."""

    files: List[Path] = field(default_factory=list)
    reports: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def check_requirements(int8: Optional[str] = None, tensorrt: bool = False) -> None:
    """Fail fast, before any model is built, when a needed package is missing."""
    for module in ('onnx', 'onnxruntime', 'onnxscript'):
        require(module)
    if int8 is not None and int8 not in INT8_MODES:
        raise ExportError(f'--int8-mode must be one of {INT8_MODES}, got {int8!r}')
    if tensorrt:
        require_tensorrt()


def prepare_out_dir(out_dir: Union[str, Path]) -> Path:
    """Create ``out_dir`` and prove it writable (a temporary file) before any expensive work."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise ExportError(f'{out}: output folder not writable ({e.strerror or e})') from e
    return out


def _merge_verification(path: Path, entries: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    data: Dict[str, Any] = {'schema_version': SCHEMA_VERSION, 'graphs': {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if isinstance(old, dict) and isinstance(old.get('graphs'), dict):
                data['graphs'].update(old['graphs'])
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # an unreadable file is replaced, not merged
    data['graphs'].update(entries)
    return data


def export_verified(
        source: ModelSource,
        out_dir: Union[str, Path],
        sign_output: bool = False,
        int8: Optional[str] = None,
        tensorrt: bool = False,
        fp16: bool = False,
        num_real: int = 32,
        random_batches: tuple = (1, 8),
        calibration_images: int = 64,
        fmnist_root: Optional[Union[str, Path]] = None,
        progress: Progress = None,
        calib_data: Optional[str] = None,
) -> ExportResult:
    """Export ``source`` to ONNX (and int8 / TensorRT on request), verify each, then publish atomically.

    ``calib_data``: the data set (a ``--data`` name) whose test images verify every graph and whose training
    images calibrate static int8; default the checkpoint's own, else Fashion-MNIST. ``fmnist_root`` is
    that data set's folder (``--data-root``)."""
    say = progress or (lambda _msg: None)
    check_requirements(int8, tensorrt)
    created = not Path(out_dir).exists()
    out = prepare_out_dir(out_dir)
    removed = remove_dead_temporaries(out, '.export-')
    if removed:
        say(f'removed {len(removed)} temporary folder(s) a killed export left in {out}: {", ".join(removed[:3])}')
    tmp = out / temporary_name('.export-')
    tmp.mkdir()
    result = ExportResult()
    published = False
    try:
        model, bits, size = source.model, source.bits, source.img_size
        chans = int(getattr(model, 'in_chans', 3))
        common = dict(model=source.name, img_size=size, bits=list(bits), weights_sha256=source.weights_sha256,
                      weights_sha256_of=source.weights_of, package_version=deephash_zoo.__version__)
        data = calib_data or source.dataset or 'fashion-mnist'
        say(f'verification inputs: {num_real} {data} test images + random batches {list(random_batches)} '
            f'at {size}x{size}; PyTorch reference')
        inputs = verification_inputs(model, size, num_real, random_batches, root=fmnist_root, data=data)
        reference = torch_codes(model, inputs)

        fp32_path = tmp / f'{source.name}.onnx'
        say(f'exporting {fp32_path.name} (fp32)')
        export_onnx(source, fp32_path, sign_output=sign_output)
        session = create_session(fp32_path)
        result.reports[fp32_path.name] = dict(common, precision='fp32', **verify_session(
            session, reference, inputs, bits, FP32, fp32_path.name))
        del session
        if int8 is not None:
            int8_path = tmp / f'{source.name}.int8.onnx'
            calibration = None
            if int8 == 'static':
                say(f'calibrating on {calibration_images} {data} training images')
                calibration = data_batch(model, size, data, 'database', calibration_images, fmnist_root)
            say(f'quantising {int8_path.name} (int8 {int8})')
            quantize_int8(fp32_path, int8_path, int8, calibration,
                          calibration_data='Fashion-MNIST' if data == 'fashion-mnist' else data)
            session = create_session(int8_path)
            result.reports[int8_path.name] = dict(common, precision=f'int8-{int8}', **verify_session(
                session, reference, inputs, bits, INT8, int8_path.name))
            del session
        if tensorrt:
            cache = tmp / f'{source.name}.trt'
            say(f'building the TensorRT engine ({"fp16" if fp16 else "fp32"}) into {cache.name}/')
            session = tensorrt_session(fp32_path, cache, fp16, (chans, size, size))
            key = f'{cache.name} ({"fp16" if fp16 else "fp32"})'
            result.reports[key] = dict(common, precision='fp16' if fp16 else 'fp32', **verify_session(
                session, reference, inputs, bits, FP16 if fp16 else FP32, key))
            del session

        verification = tmp / VERIFICATION_FILE
        verification.write_text(json.dumps(_merge_verification(out / VERIFICATION_FILE, result.reports), indent=2))
        for item in sorted(tmp.iterdir()):
            if item.name == VERIFICATION_FILE:
                continue
            final = out / item.name
            replace_dir(item, final) if item.is_dir() else os.replace(item, final)
            result.files.append(final)
        os.replace(verification, out / VERIFICATION_FILE)
        result.files.append(out / VERIFICATION_FILE)
        published = True
    except VerificationError as e:
        hint = ''
        if source.checkpoint is None and '.int8.' in str(e):
            hint = ('; note: random weights give codes near 0, where int8 rounding flips bits '
                    '(trained checkpoints, whose codes saturate, agree far better)')
        raise VerificationError(f'{e}; export refused, nothing written to {out}{hint}') from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not published and not any(out.iterdir()):
            out.rmdir()  # a failed export into a folder it made leaves nothing behind
    return result
