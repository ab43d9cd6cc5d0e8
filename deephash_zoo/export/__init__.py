"""Export hash models to ONNX (fp32, int8) and TensorRT, each verified against PyTorch, and measure them.

One concept a module: :mod:`.onnx_export` (graph + metadata), :mod:`.verify` (ORT vs PyTorch),
:mod:`.quantize` (int8), :mod:`.tensorrt` (TensorRT execution provider), :mod:`.pipeline` (the
all-or-nothing verified export), :mod:`.bench` (the efficiency table). onnx / onnxruntime / onnxscript
are the ``export`` extra: they are imported when used, so ``import deephash_zoo`` never needs them.
"""
from .onnx_export import (
    EXPORTER,
    INPUT_NAME,
    CodesModule,
    ExportError,
    ModelSource,
    export_onnx,
    load_model_source,
    output_names,
    read_metadata,
    state_sha256,
)
from .pipeline import VERIFICATION_FILE, ExportResult, check_requirements, export_verified, prepare_out_dir
from .quantize import INT8_MODES, quantize_int8
from .tensorrt import GPU_INSTALL, require_tensorrt, tensorrt_session
from .verify import FP16, FP32, INT8, Thresholds, VerificationError, compare, create_session, verify_session

__all__ = [
    'EXPORTER', 'INPUT_NAME', 'CodesModule', 'ExportError', 'ModelSource', 'export_onnx', 'load_model_source',
    'output_names', 'read_metadata', 'state_sha256', 'VERIFICATION_FILE', 'ExportResult', 'check_requirements',
    'export_verified', 'prepare_out_dir', 'INT8_MODES', 'quantize_int8', 'GPU_INSTALL', 'require_tensorrt',
    'tensorrt_session', 'FP16', 'FP32', 'INT8', 'Thresholds', 'VerificationError', 'compare', 'create_session',
    'verify_session',
]
