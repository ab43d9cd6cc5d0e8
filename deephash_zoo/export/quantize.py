"""int8 graphs with onnxruntime's quantiser: static (calibrated, the default) or dynamic.

Measured by ``deephash-export --bench`` (``export/efficiency.md`` has the current table; figures here:
224x224, ORT with 2 threads on a 2-core AMD EPYC with AVX512-VNNI, random weights, ms per image at batch
1 / 64): dath_alexnet_32 fp32 34.4 / 13.9, dynamic int8 of every Conv and MatMul 57.4 / 68.4, dynamic
int8 of the MatMuls only 19.2 / 14.0.

* **dynamic** (``quantize_dynamic``: int8 weights, activations quantised at run time) covers the MatMuls
  only (:data:`DYNAMIC_OP_TYPES`). The export writes fc6/fc7 as MatMuls on matrices fixed for the graph's
  input size (:func:`.onnx_export.matmul_heads`; in the model they are timm's ``ConvMlp`` convolutions so
  any size works): dynamic int8 turns them into ``MatMulInteger`` (fused by ORT into
  ``DynamicQuantizeMatMul``), whose int8 GEMM reads a quarter
  of the weight bytes that dominate batch 1. Dynamically quantised convolutions become ``ConvInteger``,
  which ORT runs with a generic kernel slower than its fp32 convolution at every batch (the 57.4 / 68.4
  above): the convolutions stay fp32.
* **static** (``quantize_static``: QDQ format, per-channel int8 weights, uint8 activations with MinMax
  ranges calibrated on the checkpoint's training images through the model transform) is the fastest
  row of the table: ORT fuses the QDQ pairs into ``QLinearConv``/``QLinearMatMul`` with int8 kernels
  (AVX512-VNNI here) and reads 4x fewer weight bytes. It pays, so it is the default.

Sign agreement with PyTorch (verification inputs, see :mod:`.verify`): 0.993 for random-weight
dath_alexnet_32 at 224; 0.995-1.0 for the trained checkpoints we probed at 64x64. Random weights are
the worst case: their codes sit near 0 (median |code| ~0.04), where any rounding flips a bit, and
small random models land between 0.977 and 0.999 depending on the seed; a trained model's codes
saturate towards +-1. Deploying on a CPU without VNNI, ORT advises ``reduce_range`` for u8s8 kernels.

Static int8 quantises Conv and MatMul (where the weights and FLOPs are); the attention softmax, adds
and tanh stay fp32, which costs nothing measurable and keeps the codes' last step exact.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

import numpy as np

from .onnx_export import INPUT_NAME, require, set_metadata

__all__ = ['INT8_MODES', 'OP_TYPES', 'DYNAMIC_OP_TYPES', 'quantize_int8']

INT8_MODES = ('static', 'dynamic')
OP_TYPES = ['Conv', 'MatMul']  # static int8
DYNAMIC_OP_TYPES = ['MatMul', 'Gemm']  # dynamic int8: ConvInteger is slower than fp32 Conv in ORT


def _reader(calibration: np.ndarray, batch: int):
    quantization = require('onnxruntime.quantization')

    class _Batches(quantization.CalibrationDataReader):
        """Feeds the calibration images in fixed batches (ORT's calibrator pulls until None)."""

        def __init__(self) -> None:
            self._it: Iterator[Dict[str, np.ndarray]] = iter(
                [{INPUT_NAME: calibration[i:i + batch]} for i in range(0, len(calibration), batch)])

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self._it, None)

    return _Batches()


def quantize_int8(fp32_path: Union[str, Path], out_path: Union[str, Path], mode: str = 'static',
                  calibration: Optional[np.ndarray] = None, calibration_batch: int = 8,
                  calibration_data: str = 'Fashion-MNIST') -> Path:
    """Write the int8 version of the fp32 graph at ``fp32_path`` to ``out_path`` (metadata kept, checked).

    ``calibration`` (float32 images, already transformed) is required for ``mode='static'``.
    """
    if mode not in INT8_MODES:
        raise ValueError(f'int8 mode must be one of {INT8_MODES}, got {mode!r}')
    onnx = require('onnx')
    quantization = require('onnxruntime.quantization')
    out_path = Path(out_path)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs pre-processing advice at WARNING
    try:
        if mode == 'dynamic':
            quantization.quantize_dynamic(str(fp32_path), str(out_path), weight_type=quantization.QuantType.QInt8,
                                          op_types_to_quantize=DYNAMIC_OP_TYPES)
        else:
            if calibration is None or len(calibration) == 0:
                raise ValueError('static int8 quantisation needs calibration images')
            quantization.quantize_static(
                str(fp32_path), str(out_path), _reader(calibration, calibration_batch),
                quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=OP_TYPES, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax,
            )
    finally:
        logging.getLogger().setLevel(quiet)
    proto = onnx.load(str(out_path))
    props = {p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props}
    props['deephash.precision'] = f'int8-{mode}'
    props['deephash.quantization'] = (
        f'onnxruntime.quantization.quantize_{mode}, ' + (
            f'QDQ, per-channel int8 weights, uint8 activations, MinMax calibration on {len(calibration)} '
            f'{calibration_data} training images, ops {OP_TYPES}' if mode == 'static' else
            f'int8 weights, ops {DYNAMIC_OP_TYPES} (convolutions fp32)'))
    set_metadata(proto, props)
    onnx.save(proto, str(out_path))
    onnx.checker.check_model(str(out_path))
    return out_path
