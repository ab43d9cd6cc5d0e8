"""Export a hash model to ONNX: dynamic batch, named outputs per code length, metadata, checked.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), chosen by measurement
on this repo's models (torch 2.14.1, onnxruntime 1.32, 2-core AMD EPYC, batch 1, ORT CPU):

* Both exporters work on every model here at 64x64 and at 224x224 (``dath_n_16``, ``dath_alexnet_32``,
  ``admth_cnnf_multi``): the head's nearest-interpolate guard (``models/head.py``) replaced
  ``AdaptiveAvgPool2d(6)``, the op the TorchScript exporter refuses at small sizes. ORT matches
  PyTorch to < 3e-7 either way.
* The graphs run equally fast once ORT has optimised them (dath_alexnet_32 at 224: 140 vs 151 ms,
  admth_cnnf_multi: 110 vs 104 ms, dynamo vs TorchScript, interleaved medians on a busy machine, i.e.
  within noise), but the dynamo graph is what ORT and the quantiser see *before* optimisation, and it
  is clean: 0 ``Shape``/``Gather``/``Constant`` nodes against 10/10/68 in the TorchScript graph of
  admth_cnnf_multi (the dynamic-batch reshapes are folded), so quantisation and TensorRT get a simple graph.
* The TorchScript exporter is deprecated in torch 2.x and dynamo is the default; timm's
  ``onnx_export`` helper wraps the same two exporters and has one input and one output name, where a
  multi-length model needs one output per length, so we call torch directly.

The exported module is :class:`CodesModule`: it runs the model and splits the relaxed codes into one
output per length (``codes`` for a single length, ``codes_16`` ... ``codes_64`` otherwise), with
optional sign outputs (``signs`` / ``signs_16`` ...; int8 {-1, +1}, exactly ``model.encode``). Files are
written by the caller into a temporary folder and renamed into place (see :mod:`.pipeline`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.data import resolve_data_config

import deephash_zoo
from deephash_zoo.extras import require  # the export modules import it from here
from deephash_zoo.hub.cache import create_pretrained
from deephash_zoo.hub.checkpoint import load_checkpoint, read_checkpoint_config, resolve_checkpoint_dir, weights_sha256
from deephash_zoo.models.contract import check_input_size
from deephash_zoo.utils import state_sha256 as state_dict_sha256

from .onnx_lrn import TRANSLATION as LRN_TRANSLATION
from .onnx_lrn import lrn_as_onnx_op

__all__ = ['EXPORTER', 'INPUT_NAME', 'ExportError', 'ModelSource', 'CodesModule', 'require', 'load_model_source',
           'output_names', 'state_sha256', 'onnx_metadata', 'export_onnx', 'read_metadata', 'min_input_size',
           'check_img_size']

EXPORTER = f'torch.onnx.export(dynamo=True), torch {torch.__version__}'
# how an image file becomes the 8-bit RGB the graph's preprocessing starts from (deephash_zoo.data.images.to_rgb):
# a deployer without the package reads it from the graph
IMAGE_MODE = ("8-bit RGB as Pillow's Image.convert('RGB') gives it (grey repeated in 3 channels, palette expanded, "
              'alpha dropped without compositing, EXIF orientation not applied); 16-bit grey scaled by 1/257')
INPUT_NAME = 'images'
META_PREFIX = 'deephash.'


class ExportError(ValueError):
    """A problem with what the user asked to export (one line; the CLI prints it)."""


@dataclass
class ModelSource:
    """A model ready to export and what the graph's metadata says about where its weights came from."""

    model: nn.Module
    name: str
    img_size: int
    weights_sha256: str
    weights_of: str  # what the hash is of: the checkpoint file, or the in-memory state of random weights
    checkpoint: Optional[Path] = None
    dataset: Optional[str] = None  # what the weights were trained on (a checkpoint's config): the default real data

    @property
    def bits(self) -> Tuple[int, ...]:
        return tuple(self.model.bits)


def state_sha256(model: nn.Module) -> str:
    """sha256 over the state dict (sorted names, dtype, shape, raw bytes): identifies in-memory weights."""
    return state_dict_sha256(model.state_dict())


def min_input_size(model: Union[str, nn.Module]) -> int:
    """The smallest input side ``model`` (a module, or a registered name) takes; 1 when it says nothing.

    A name is built on the meta device (no weights allocated), so a size can be refused in milliseconds
    before any real model is built."""
    if isinstance(model, str):
        try:
            with torch.device('meta'):
                model = timm.create_model(model)
        except Exception:  # a model that cannot be built on meta: its own forward check still holds
            return 1
    return int(getattr(model, 'min_input_size', 1))


def check_img_size(name: str, img_size: Optional[int], min_size: int) -> None:
    """Refuse an input size the model cannot take (0 included: no size silently means the default)."""
    if img_size is not None:
        try:
            check_input_size(img_size, min_size, name, '--img-size')
        except ValueError as e:
            raise ExportError(str(e)) from None


def load_model_source(
        name: Optional[str] = None,
        checkpoint: Optional[Union[str, Path]] = None,
        img_size: Optional[int] = None,
        pretrained: bool = False,
        seed: int = 0,
) -> ModelSource:
    """The model named ``name`` (random weights from ``seed``, or published ones) or a checkpoint's.

    With both, the checkpoint must hold that architecture: exporting weights under another model's name
    would write wrong metadata. ``img_size`` defaults to the checkpoint's training size, else the model's.
    """
    if name is None and checkpoint is None:
        raise ExportError('pass --model NAME, --checkpoint DIR, or both')
    if pretrained and checkpoint is not None:
        raise ExportError('--pretrained and --checkpoint both name the weights; pass one')
    if name is not None and not timm.is_model(name):
        raise ExportError(f'Unknown model ({name}); list them with `python -c "import deephash_zoo; '
                          f'print(deephash_zoo.list_hash_models())"`')
    if name is not None:
        check_img_size(name, img_size, min_input_size(name))  # before loading weights (or reaching the Hub)
    if checkpoint is not None:
        ckpt = resolve_checkpoint_dir(checkpoint).resolve()
        config = read_checkpoint_config(ckpt)
        arch = str(config['architecture'])
        if name is not None and arch != name:
            raise ExportError(f'{ckpt}: the checkpoint holds {arch}, not {name}; pass --model {arch} or drop --model')
        model = load_checkpoint(ckpt)
        trained = (config.get('training') or {}).get('img_size')
        size = img_size if img_size is not None else (int(trained) if trained else None)
        source = ModelSource(model, arch, 0, weights_sha256(ckpt / 'model.safetensors'),
                             'checkpoint model.safetensors (file sha256)', ckpt,
                             dataset=config.get('dataset') or (config.get('training') or {}).get('data'))
    else:
        torch.manual_seed(seed)
        model = (create_pretrained(name) if pretrained else timm.create_model(name)).eval()
        size = img_size
        what = 'published weights' if pretrained else f'random initialisation (seed {seed})'
        source = ModelSource(model, str(name), 0, state_sha256(model), f'in-memory state dict, {what}')
    if not getattr(source.model, 'bits', ()):
        raise ExportError(f'{source.name} has no hash layer (num_classes=0); nothing to export')
    default = int(resolve_data_config(model=source.model)['input_size'][-1])
    source.img_size = default if size is None else size
    check_img_size(source.name, source.img_size, min_input_size(source.model))
    source.model.eval()
    return source


def output_names(bits: Sequence[int], sign_output: bool = False) -> List[str]:
    """``codes`` (one length) or ``codes_<bits>`` per length, then the matching ``signs`` names."""
    stems = ['codes'] + (['signs'] if sign_output else [])
    if len(bits) == 1:
        return stems
    return [f'{stem}_{b}' for stem in stems for b in bits]


class CodesModule(nn.Module):
    """The graph's forward: relaxed codes split per length, then (optionally) their int8 signs."""

    def __init__(self, model: nn.Module, sign_output: bool = False) -> None:
        super().__init__()
        self.model = model
        self.sign_output = sign_output
        self.bits = tuple(model.bits)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        relaxed = self.model(images)
        codes, start = [], 0
        for b in self.bits:
            codes.append(relaxed[:, start:start + b])
            start += b
        if self.sign_output:  # as model.encode: 0 -> +1
            codes += [torch.where(c >= 0, 1, -1).to(torch.int8) for c in codes]
        return tuple(codes)


def onnx_metadata(source: ModelSource, precision: str, sign_output: bool, extra: Optional[Dict[str, str]] = None
                  ) -> Dict[str, str]:
    """The graph's ``metadata_props``: all a client needs to preprocess, decode and trace the weights."""
    cfg = resolve_data_config(model=source.model)
    meta = {
        'model': source.name,
        'bits': json.dumps(list(source.bits)),
        'outputs': json.dumps(output_names(source.bits, sign_output)),
        'input_name': INPUT_NAME,
        'input_size': json.dumps([int(cfg['input_size'][0]), source.img_size, source.img_size]),
        'mean': json.dumps([float(v) for v in cfg['mean']]),
        'std': json.dumps([float(v) for v in cfg['std']]),
        'interpolation': str(cfg['interpolation']),
        'crop_pct': str(cfg.get('crop_pct')),
        'crop_mode': str(cfg.get('crop_mode', 'center')),
        'weights_sha256': source.weights_sha256,
        'weights_sha256_of': source.weights_of,
        'precision': precision,
        'exporter': EXPORTER,
        'package_version': deephash_zoo.__version__,
        'sign_rule': 'code >= 0 -> +1 else -1 (model.encode)',
        'image_mode': IMAGE_MODE,
        'pixel_scale': 'float32 pixels / 255, then (x - mean) / std per channel, NCHW',
    }
    meta.update(extra or {})
    return {META_PREFIX + k: v for k, v in meta.items()}


def matmul_heads(model: nn.Module, img_size: int) -> nn.Module:
    """A copy of ``model`` whose fc6/fc7 (:class:`deephash_zoo.models.head.FcMlp`) run as MatMuls on matrices
    fixed for ``img_size`` inputs, where that size gives a map they have a matrix form for; ``model`` itself
    when none does (its convolutions then stay in the graph). A graph has one input size, so this is exact."""
    import copy

    from deephash_zoo.models.head import FcMlp

    if not any(isinstance(m, FcMlp) for m in model.modules()):
        return model
    model = copy.deepcopy(model).eval()
    maps: Dict[int, Tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: maps.__setitem__(id(mod), tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, FcMlp)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, int(getattr(model, 'in_chans', 3)), img_size, img_size))
    finally:
        for hook in hooks:
            hook.remove()
    for m in model.modules():
        if isinstance(m, FcMlp) and id(m) in maps:
            m.fix_input_map(*maps[id(m)])
    return model


def export_onnx(source: ModelSource, path: Union[str, Path], sign_output: bool = False,
                example_batch: int = 2) -> Path:
    """Write the fp32 graph of ``source`` to ``path`` with metadata, and run ``onnx.checker`` on it.

    The caller gives a path inside a temporary folder; nothing here renames into place.
    """
    onnx = require('onnx')
    require('onnxscript')
    path = Path(path)
    module = CodesModule(lrn_as_onnx_op(matmul_heads(source.model, source.img_size)), sign_output).eval()
    chans = int(getattr(source.model, 'in_chans', 3))
    example = torch.randn(example_batch, chans, source.img_size, source.img_size)
    batch = torch.export.Dim('batch', min=1, max=65536)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # exporter chatter (deprecations inside torch.export), not ours
        program = torch.onnx.export(
            module, (example,), None, dynamo=True, verbose=False, external_data=False, optimize=True,
            input_names=[INPUT_NAME], output_names=output_names(source.bits, sign_output),
            dynamic_shapes={'images': {0: batch}}, custom_translation_table=LRN_TRANSLATION,
        )
    proto = program.model_proto
    proto.doc_string = f'{source.name}: deep hashing codes {list(source.bits)} (deephash-zoo)'
    set_metadata(proto, onnx_metadata(source, 'fp32', sign_output))
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return path


def set_metadata(proto, props: Dict[str, str]) -> None:
    """Replace (not append) ``metadata_props`` entries with the same keys."""
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The ``deephash.*`` metadata of a graph (prefix removed), read back with ``onnx.load``."""
    onnx = require('onnx')
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
