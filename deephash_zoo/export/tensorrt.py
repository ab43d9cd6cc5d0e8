"""TensorRT through onnxruntime's TensorRT execution provider, with an on-disk engine cache.

We use the execution provider rather than the ``tensorrt`` Python API: it consumes the very ONNX graph
that was verified, builds the engine on first use and caches it (``trt_engine_cache_path``), falls back
to CUDA/CPU for any node TensorRT rejects, and is what the ``gpu`` extra installs (onnxruntime-gpu). The
engine is verified against PyTorch like every other export (fp16: :data:`~.verify.FP16` thresholds).

Without onnxruntime-gpu built with TensorRT (and the TensorRT libraries) this fails with one line naming
what is missing and how to install it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from .onnx_export import INPUT_NAME, require

__all__ = ['TRT_PROVIDER', 'GPU_INSTALL', 'require_tensorrt', 'tensorrt_providers', 'tensorrt_session']

TRT_PROVIDER = 'TensorrtExecutionProvider'
GPU_INSTALL = "pip install 'deephash-zoo[gpu]'"


def require_tensorrt() -> None:
    """Fail unless onnxruntime offers the TensorRT execution provider."""
    ort = require('onnxruntime')
    if TRT_PROVIDER not in ort.get_available_providers():
        raise ImportError(
            f'TensorRT is not available: onnxruntime {ort.__version__} has no {TRT_PROVIDER} '
            f'(needs the onnxruntime-gpu package and NVIDIA TensorRT); install with {GPU_INSTALL}')


def tensorrt_providers(cache_dir: Union[str, Path], fp16: bool, input_shape: Tuple[int, int, int],
                       max_batch: int = 64) -> List[Any]:
    """Provider list: TensorRT (engine cache, fp16 flag, dynamic batch profile 1..max_batch), then CUDA, CPU."""
    c, h, w = input_shape
    options: Dict[str, Any] = {
        'trt_engine_cache_enable': True,
        'trt_engine_cache_path': str(cache_dir),
        'trt_timing_cache_enable': True,
        'trt_timing_cache_path': str(cache_dir),
        'trt_fp16_enable': bool(fp16),
        'trt_profile_min_shapes': f'{INPUT_NAME}:1x{c}x{h}x{w}',
        'trt_profile_opt_shapes': f'{INPUT_NAME}:1x{c}x{h}x{w}',
        'trt_profile_max_shapes': f'{INPUT_NAME}:{max_batch}x{c}x{h}x{w}',
    }
    return [(TRT_PROVIDER, options), 'CUDAExecutionProvider', 'CPUExecutionProvider']


def tensorrt_session(onnx_path: Union[str, Path], cache_dir: Union[str, Path], fp16: bool,
                     input_shape: Tuple[int, int, int], max_batch: int = 64):
    """An onnxruntime session that really runs on TensorRT (builds or loads the cached engine)."""
    require_tensorrt()
    from .verify import create_session

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    session = create_session(onnx_path, providers=tensorrt_providers(cache_dir, fp16, input_shape, max_batch))
    if session.get_providers()[0] != TRT_PROVIDER:
        raise ImportError(f'onnxruntime did not start {TRT_PROVIDER} (got {session.get_providers()}); '
                          f'check the TensorRT and CUDA libraries, or reinstall with {GPU_INSTALL}')
    return session
