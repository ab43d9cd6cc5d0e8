"""A verified export, all or nothing: graphs are built and checked in a hidden temporary folder inside
``out_dir`` and renamed into place only when every requested graph has passed verification.

``out_dir`` then holds ``<model>.onnx`` (fp32), ``<model>.int8.onnx`` (``int8=...``), ``<model>.trt/``
(TensorRT engine cache, ``tensorrt=True``) and ``verification.json``, which keeps one entry per graph file
(an export adds or replaces its own entries, and drops those of graphs no longer in the folder)::

    {"schema_version": 1,
     "graphs": {"dath_alexnet_32.onnx": {"model": ..., "precision": "fp32", "img_size": 224, "bits": [32],
                 "weights_sha256": ..., "weights_sha256_of": ..., "max_abs_diff": 2.4e-07,
                 "sign_agreement": 1.0, "sign_agreement_per_length": {"32": 1.0}, "bits_compared": 1312,
                 "inputs": {"fashion-mnist": {...}, "random_b1": {...}, "random_b8": {...}},
                 "thresholds": {...}, "passed": true, "providers": [...], "package_version": ...}}}

A failed verification raises :class:`~.verify.VerificationError` and leaves ``out_dir`` as it was.

One folder holds the graphs of one model, at one input size, from one set of weights: ``verification.json``
and the graphs' metadata must describe what a client loads. An export into a folder holding graphs of other
weights (or another model or input size) is refused before any work (:func:`check_out_dir`) unless
``overwrite=True``, which removes those graphs when the new ones are published.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import deephash_zoo
from deephash_zoo.utils import remove_dead_temporaries, replace_dir, temporary_name

from .onnx_export import ExportError, ModelSource, export_onnx, read_metadata, require
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

__all__ = ['ExportResult', 'check_requirements', 'prepare_out_dir', 'check_out_dir', 'export_verified',
           'VERIFICATION_FILE']

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


def _read_graph_entries(path: Path) -> Dict[str, Dict[str, Any]]:
    """The ``graphs`` of an existing ``verification.json`` ({} when absent or unreadable: it is replaced)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    graphs = old.get('graphs') if isinstance(old, dict) else None
    return {k: v for k, v in graphs.items() if isinstance(v, dict)} if isinstance(graphs, dict) else {}


def _graph_file(key: str) -> str:
    """The file an entry describes: its key, less TensorRT's `` (fp16)`` / `` (fp32)`` after the folder name."""
    return key.split(' (')[0]


def _is_graph(path: Path) -> bool:
    return (path.is_file() and path.suffix == '.onnx') or (path.is_dir() and path.suffix == '.trt')


Provenance = Optional[Tuple[str, int, str]]  # (model, input size, weights sha256); None: not known


def _provenance(path: Path, entry: Optional[Dict[str, Any]]) -> Provenance:
    """Where a graph's weights came from: its verification.json entry, else its own metadata."""
    if entry is None and path.suffix == '.onnx':
        try:
            meta = read_metadata(path)
            entry = dict(model=meta['model'], img_size=json.loads(meta['input_size'])[-1],
                         weights_sha256=meta['weights_sha256'])
        except Exception:  # not a graph of ours, or not readable: of unknown weights
            return None
    try:
        return str(entry['model']), int(entry['img_size']), str(entry['weights_sha256'])
    except (KeyError, TypeError, ValueError):
        return None


def _describe(what: Provenance) -> str:
    return 'unknown weights' if what is None else f'{what[0]} {what[1]}x{what[1]}, weights sha256 {what[2][:12]}...'


def check_out_dir(out_dir: Union[str, Path], source: ModelSource, overwrite: bool = False) -> List[str]:
    """The graphs in ``out_dir`` of other weights, model or input size than ``source`` (to remove on publishing
    with ``overwrite``); without it, refuse them in one line naming what the folder holds, before any work."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    entries = {_graph_file(k): v for k, v in _read_graph_entries(out / VERIFICATION_FILE).items()}
    ours = (source.name, source.img_size, source.weights_sha256)
    stale: Dict[str, Provenance] = {}
    for path in sorted(out.iterdir()):
        if _is_graph(path) and (what := _provenance(path, entries.get(path.name))) != ours:
            stale[path.name] = what
    if stale and not overwrite:
        groups: Dict[str, List[str]] = {}
        for name, what in stale.items():
            groups.setdefault(_describe(what), []).append(name)
        held = '; '.join(f'{", ".join(names)} ({what})' for what, names in groups.items())
        raise ExportError(f'{out} holds graphs of other weights, model or input size: {held}; this export is '
                          f'{_describe(ours)}; pass --overwrite to replace them, or choose another --out')
    return list(stale)


def _merge_verification(out: Path, entries: Dict[str, Dict[str, Any]], drop: List[str]) -> Dict[str, Any]:
    """The new entries plus the old ones of graphs still in ``out`` that this export neither replaces nor
    drops (an entry whose graph is gone describes nothing)."""
    new_files = {_graph_file(k) for k in entries}
    graphs = {k: v for k, v in _read_graph_entries(out / VERIFICATION_FILE).items()
              if (out / _graph_file(k)).exists() and _graph_file(k) not in new_files and _graph_file(k) not in drop}
    graphs.update(entries)
    return {'schema_version': SCHEMA_VERSION, 'graphs': graphs}


def _publish(tmp: Path, out: Path, stale: List[str], result: ExportResult) -> None:
    """Move the stale graphs aside into ``tmp`` (removed with it), then the new graphs into ``out``, then
    ``verification.json``: each a rename, so every file in ``out`` is whole at every instant, and a process
    killed in between never leaves old and new weights side by side (the next export removes ``tmp``, and
    drops the entries of graphs that are gone)."""
    aside = tmp / '.replaced'
    aside.mkdir()
    for name in stale:
        if (out / name).exists():
            os.replace(out / name, aside / name)
    for item in sorted(tmp.iterdir()):
        if item.name in (VERIFICATION_FILE, aside.name):
            continue
        final = out / item.name
        replace_dir(item, final) if item.is_dir() else os.replace(item, final)
        result.files.append(final)
    os.replace(tmp / VERIFICATION_FILE, out / VERIFICATION_FILE)
    result.files.append(out / VERIFICATION_FILE)


def export_verified(
        source: ModelSource,
        out_dir: Union[str, Path],
        sign_output: bool = False,
        int8: Optional[str] = None,
        tensorrt: bool = False,
        fp16: bool = False,
        num_real: Optional[int] = None,
        random_batches: tuple = (1, 8),
        calibration_images: int = 64,
        fmnist_root: Optional[Union[str, Path]] = None,
        progress: Progress = None,
        calib_data: Optional[str] = None,
        overwrite: bool = False,
) -> ExportResult:
    """Export ``source`` to ONNX (and int8 / TensorRT on request), verify each, then publish atomically.

    ``calib_data``: the data set (a ``--data`` name) whose test images verify every graph and whose training
    images calibrate static int8; default the checkpoint's own, else Fashion-MNIST. ``fmnist_root`` is
    that data set's folder (``--data-root``). ``overwrite``: replace graphs of other weights in ``out_dir``
    (see :func:`check_out_dir`), else refuse them."""
    say = progress or (lambda _msg: None)
    check_requirements(int8, tensorrt)
    created = not Path(out_dir).exists()
    out = prepare_out_dir(out_dir)
    stale = check_out_dir(out, source, overwrite)
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
        inputs = verification_inputs(model, size, num_real, random_batches, root=fmnist_root, data=data)
        say(f'verification inputs: {len(inputs[data])} {data} test images + random batches {list(random_batches)} '
            f'at {size}x{size}; PyTorch reference')
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

        merged = _merge_verification(out, result.reports, stale)
        (tmp / VERIFICATION_FILE).write_text(json.dumps(merged, indent=2))
        _publish(tmp, out, stale, result)
        if stale:
            say(f'removed {len(stale)} graph(s) of other weights (--overwrite): {", ".join(stale)}')
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
