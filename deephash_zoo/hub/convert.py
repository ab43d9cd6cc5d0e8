"""ImageNet initialisation: foreign AlexNet / CNN-F weights -> a safetensors file in our layout.

``deephash-train --init FILE`` reads the result (tensors named as in our model's ``state_dict``; the
attention modules and hash layers are not in it and keep their initialisation).

* torchvision's AlexNet (``alexnet-owt-7be5be79.pth``, a state dict read with
  ``torch.load(weights_only=True)``): ``features.{0,3,6,8,10}`` -> every AlexNet trunk's convs (both
  DATH streams), ``classifier.1`` (Linear 9216->4096 over the flattened 256x6x6 pool5) -> every
  ``fc6`` reshaped to a 256x6x6 convolution, ``classifier.4`` -> every ``fc7`` (1x1 convolution);
  ``classifier.6`` (the 1000 ImageNet classes) is dropped. Inputs are timm-normalised in both.
* MatConvNet's ``imagenet-vgg-f.mat`` (CNN-F, read with ``scipy.io.loadmat``): the eight ``conv``
  layers in ``layers`` are conv1-5, fc6, fc7, fc8 (dropped). Filters are H x W x Cin x Cout and
  become Cout x Cin x H x W. MatConvNet feeds conv1 RGB pixels in 0..255 minus ``averageImage``
  and no std; our models take ``(x/255 - mean)/std`` (ImageNet mean/std). Since x = 255 (std x_n +
  mean), conv1 sees the same numbers when W'[o,c] = W[o,c] * 255 std_c and
  b'[o] = b[o] + sum_{c,h,w} W[o,c,h,w] (255 mean_c - avg_c), which is exact because CNN-F's conv1
  has no padding. A per-pixel ``averageImage`` (H x W x 3) is folded as its per-channel mean, the
  only part a convolution over any input size can carry (``ConvertReport.notes`` says so).
"""
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from deephash_zoo.extras import require
from deephash_zoo.utils import safetensors_bytes, write_atomic

__all__ = ['ConvertReport', 'SOURCE_URLS', 'convert_torchvision_alexnet', 'convert_matconvnet_vggf', 'read_vggf_mat',
           'fold_input_normalisation', 'save_init_file', 'convert_file', 'download_source']

PathLike = Union[str, Path]
ALEXNET_CONVS = (0, 3, 6, 8, 10)  # torchvision's features indices == ours
CNNF_CONVS = (0, 4, 8, 10, 12)  # our CNN-F trunk (MatConvNet conv1..conv5)
SOURCE_URLS = {
    'torchvision-alexnet': 'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth',
    'matconvnet-vggf': 'https://www.vlfeat.org/matconvnet/models/imagenet-vgg-f.mat',
}


@dataclass
class ConvertReport:
    """What a conversion produced: the tensors (our names) and where each came from."""

    model: str
    source: str
    path: str
    tensors: Dict[str, torch.Tensor]
    mapping: Dict[str, str] = field(default_factory=dict)  # ours -> theirs
    notes: List[str] = field(default_factory=list)

    def metadata(self) -> Dict[str, str]:
        """safetensors header metadata (strings only)."""
        return {'format': 'pt', 'model': self.model, 'source': self.source, 'source_file': Path(self.path).name,
                'notes': ' | '.join(self.notes)}


def _target(model_name: str) -> nn.Module:
    """The model on the meta device: names and shapes without allocating 200+ MB."""
    import timm

    import deephash_zoo  # noqa: F401  (registers the models)

    return timm.create_model(model_name, device='meta')


def _trunks(model: nn.Module, arch: str, model_name: str, source: str) -> List[str]:
    from deephash_zoo.models.trunks import ConvTrunk

    trunks = [(name, m) for name, m in model.named_modules() if isinstance(m, ConvTrunk)]
    if not trunks:
        raise ValueError(f'{model_name} has no AlexNet / CNN-F trunk; {source} weights fit DATH (AlexNet) and '
                         f'ADMTH/DMLH (CNN-F) models')
    wrong = [name for name, m in trunks if m.arch != arch]
    if wrong:
        want = 'dath_* (AlexNet trunks)' if arch == 'alexnet' else 'admth_* / dmlh_* (CNN-F trunk)'
        raise ValueError(f'{source} weights are {arch}; {model_name} has a {trunks[0][1].arch} trunk. '
                         f'Expected a {want} model')
    return [name for name, _ in trunks]


def _mlps(model: nn.Module) -> List[str]:
    from deephash_zoo.models.head import FcMlp

    return [name for name, m in model.named_modules() if isinstance(m, FcMlp)]


def _check_fits(tensors: Mapping[str, torch.Tensor], model: nn.Module, model_name: str, what: str) -> None:
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unknown = sorted(k for k in tensors if k not in own)
    wrong = sorted(f'{k} {tuple(v.shape)} (model: {own[k]})' for k, v in tensors.items()
                   if k in own and tuple(v.shape) != own[k])
    if unknown or wrong:
        raise ValueError(f'{what}: converted tensors do not fit {model_name} '
                         f'(unknown: {unknown[:3]}; shape: {wrong[:3]})')


# ---------------------------------------------------------------------------------------------- torchvision
def _load_failure(e: Exception) -> str:
    """Why torch could not read a file, without its advice to retry with ``weights_only=False``: that runs
    whatever code the file's pickle holds, which this package never does."""
    text = str(e)
    if 'Weights only load failed' in text:  # keep only what the tensor-only unpickler stopped at
        detail = ' '.join(text.partition('WeightsUnpickler error:')[2].split('Check the documentation')[0].split())
        return "torch's tensor-only loader refused it" + (f": {detail.split('. ')[0]}" if detail else '')
    return text.strip().split('\n')[0] or type(e).__name__


def _load_torchvision(path: PathLike) -> Dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: not found; torchvision\'s AlexNet weights are '
                                f'{SOURCE_URLS["torchvision-alexnet"]} (or pass --download)')
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it fails: one line, not three
            warnings.simplefilter('ignore')
            state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file)
        raise ValueError(f'{path}: not a readable PyTorch state dict ({_load_failure(e)}); expected torchvision\'s '
                         f'AlexNet weights, {SOURCE_URLS["torchvision-alexnet"]}') from e
    if isinstance(state, dict) and isinstance(state.get('state_dict'), dict):
        state = state['state_dict']
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path}: expected a state dict (name -> tensor), got {type(state).__name__}')
    return state


def _expect(state: Mapping[str, torch.Tensor], key: str, shape: Sequence[int], what: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f'{what}: missing {key!r}; expected torchvision AlexNet keys features.{{0,3,6,8,10}}.*, '
                         f'classifier.{{1,4}}.*')
    t = state[key]
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f'{what}: {key} has shape {tuple(t.shape)}; expected {tuple(shape)} (torchvision AlexNet)')
    return t


def convert_torchvision_alexnet(source: Union[PathLike, Mapping[str, torch.Tensor]], model_name: str
                                ) -> ConvertReport:
    """torchvision AlexNet weights (file or state dict) -> tensors for every AlexNet trunk and fc6/fc7 of a
    DATH model."""
    what = str(source) if not isinstance(source, Mapping) else 'state dict'
    state = _load_torchvision(source) if not isinstance(source, Mapping) else dict(source)
    model = _target(model_name)
    trunks = _trunks(model, 'alexnet', model_name, 'torchvision AlexNet')
    own = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    mapping: Dict[str, str] = {}

    def put(ours: str, theirs: str, tensor: torch.Tensor) -> None:
        out[ours] = tensor.detach().to(torch.float32).clone().contiguous()  # one copy each: safetensors forbids sharing
        mapping[ours] = theirs

    for trunk in trunks:
        for i in ALEXNET_CONVS:
            for p in ('weight', 'bias'):
                key = f'features.{i}.{p}'
                put(f'{trunk}.features.{i}.{p}', key, _expect(state, key, own[f'{trunk}.features.{i}.{p}'].shape, what))
    for mlp in _mlps(model):
        fc6 = own[f'{mlp}.fc6.weight'].shape  # (4096, 256, 6, 6)
        w6 = _expect(state, 'classifier.1.weight', (fc6[0], fc6[1] * fc6[2] * fc6[3]), what)
        put(f'{mlp}.fc6.weight', 'classifier.1.weight (reshaped)', w6.reshape(fc6))
        put(f'{mlp}.fc6.bias', 'classifier.1.bias', _expect(state, 'classifier.1.bias', (fc6[0],), what))
        fc7 = own[f'{mlp}.fc7.weight'].shape  # (4096, 4096, 1, 1)
        w7 = _expect(state, 'classifier.4.weight', fc7[:2], what)
        put(f'{mlp}.fc7.weight', 'classifier.4.weight (reshaped)', w7.reshape(fc7))
        put(f'{mlp}.fc7.bias', 'classifier.4.bias', _expect(state, 'classifier.4.bias', (fc7[0],), what))
    _check_fits(out, model, model_name, what)
    return ConvertReport(model=model_name, source='torchvision-alexnet', path=what, tensors=out, mapping=mapping,
                         notes=['classifier.6 (ImageNet classes) dropped'])


# ---------------------------------------------------------------------------------------------- MatConvNet
def _unwrap(x: Any) -> Any:
    """Strip loadmat's 1x1 object/struct arrays down to the element."""
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.flat[0]
    return x


def _field(obj: Any, name: str) -> Any:
    obj = _unwrap(obj)
    if isinstance(obj, dict):
        return obj.get(name)
    if isinstance(obj, np.ndarray) and obj.dtype.names:  # struct_as_record=True
        return obj[name].flat[0] if name in obj.dtype.names else None
    return getattr(obj, name, None)


def _text(x: Any) -> str:
    x = _unwrap(x)
    if isinstance(x, np.ndarray):
        return ''.join(str(c) for c in x.flat)
    return '' if x is None else str(x)


def _numbers(x: Any) -> np.ndarray:
    x = _unwrap(x)
    return np.asarray(x, dtype=np.float64).reshape(-1) if x is not None else np.zeros(0)


def _elements(x: Any) -> List[Any]:
    x = _unwrap(x)
    if isinstance(x, np.ndarray):
        return [_unwrap(e) for e in x.flat]
    return [x] if x is not None else []


@dataclass
class MatLayer:
    name: str
    type: str
    filter: Optional[np.ndarray]
    bias: Optional[np.ndarray]
    stride: np.ndarray
    pad: np.ndarray


def read_vggf_mat(path: PathLike) -> Tuple[List[MatLayer], np.ndarray]:
    """(conv layers in order, per-channel average in 0..255) of a MatConvNet SimpleNN ``.mat`` file."""
    loadmat = require('scipy.io').loadmat
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: not found; MatConvNet\'s CNN-F is {SOURCE_URLS["matconvnet-vggf"]} '
                                f'(or pass --download)')
    try:
        raw = loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except Exception as e:  # noqa: BLE001  (scipy raises several types for a bad file)
        raise ValueError(f'{path}: not a readable MATLAB .mat file ({e})') from e
    net = _unwrap(raw['net']) if 'net' in raw else raw
    layers = _field(net, 'layers')
    if layers is None:
        raise ValueError(f'{path}: no "layers"; expected a MatConvNet SimpleNN network (layers + meta.normalization)')
    convs = []
    for layer in _elements(layers):
        if _text(_field(layer, 'type')) != 'conv':
            continue
        weights = _field(layer, 'weights')
        if weights is not None:
            parts = [e for e in np.asarray(weights, dtype=object).flat]
            filt, bias = (parts + [None, None])[:2]
        else:  # MatConvNet before beta-8 stored filters / biases as separate fields
            filt, bias = _field(layer, 'filters'), _field(layer, 'biases')
        convs.append(MatLayer(
            name=_text(_field(layer, 'name')), type='conv',
            filter=None if filt is None else np.asarray(_unwrap(filt)),
            bias=None if bias is None else np.asarray(_unwrap(bias)),
            stride=_numbers(_field(layer, 'stride')), pad=_numbers(_field(layer, 'pad')),
        ))
    norm = _field(_field(net, 'meta'), 'normalization') if _field(net, 'meta') is not None else None
    norm = norm if norm is not None else _field(net, 'normalization')
    avg = _field(norm, 'averageImage') if norm is not None else None
    if avg is None:
        raise ValueError(f'{path}: no normalization.averageImage (meta.normalization or normalization); '
                         f'MatConvNet networks record the mean image there')
    avg = np.asarray(_unwrap(avg), dtype=np.float64)
    if avg.size % 3:
        raise ValueError(f'{path}: averageImage has shape {avg.shape}; expected 3 values or H x W x 3')
    return convs, avg.reshape(-1, 3).mean(axis=0)


def _hwcn_to_oihw(f: np.ndarray, shape: Sequence[int], what: str) -> torch.Tensor:
    """MatConvNet H x W x Cin x Cout (singleton axes possibly squeezed away) -> Cout x Cin x H x W."""
    cout, cin, kh, kw = (int(s) for s in shape)
    if f.size != cout * cin * kh * kw:
        raise ValueError(f'{what}: filter of shape {f.shape}; expected {kh}x{kw}x{cin}x{cout} (H x W x Cin x Cout)')
    squeezed = [d for d in f.shape if d != 1]
    if squeezed != [d for d in (kh, kw, cin, cout) if d != 1]:
        raise ValueError(f'{what}: filter of shape {f.shape}; expected {kh}x{kw}x{cin}x{cout} (H x W x Cin x Cout)')
    return torch.from_numpy(np.ascontiguousarray(f.reshape(kh, kw, cin, cout).transpose(3, 2, 0, 1)))


def fold_input_normalisation(weight: torch.Tensor, bias: torch.Tensor, average: Sequence[float],
                             mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """conv1 on raw 0..255 pixels minus ``average`` -> the same conv on ``(x/255 - mean)/std`` input
    (exact for an unpadded convolution; see the module docstring)."""
    w = weight.to(torch.float64)
    avg = torch.as_tensor(average, dtype=torch.float64)
    mean_t, std_t = torch.as_tensor(mean, dtype=torch.float64), torch.as_tensor(std, dtype=torch.float64)
    w_new = w * (255.0 * std_t).view(1, -1, 1, 1)
    shift = (255.0 * mean_t - avg).view(1, -1, 1, 1)
    b_new = bias.to(torch.float64) + (w * shift).sum(dim=(1, 2, 3))
    return w_new.to(torch.float32), b_new.to(torch.float32)


def convert_matconvnet_vggf(path: PathLike, model_name: str) -> ConvertReport:
    """MatConvNet ``imagenet-vgg-f.mat`` -> tensors for the CNN-F trunk and every fc6/fc7 branch of an
    ADMTH / DMLH model, with the input normalisation folded into conv1."""
    convs, average = read_vggf_mat(path)
    what = str(path)
    if len(convs) < 7:
        raise ValueError(f'{what}: {len(convs)} conv layers; expected CNN-F\'s 8 (conv1-5, fc6, fc7, fc8)')
    model = _target(model_name)
    trunks = _trunks(model, 'cnnf', model_name, 'MatConvNet CNN-F')
    own = model.state_dict()
    pcfg = getattr(model, 'pretrained_cfg', {}) or {}
    mean, std = pcfg.get('mean'), pcfg.get('std')
    out: Dict[str, torch.Tensor] = {}
    mapping: Dict[str, str] = {}

    def layer_tensors(layer: MatLayer, w_shape: Sequence[int], label: str) -> Tuple[torch.Tensor, torch.Tensor]:
        where = f'{what}: layer {layer.name or label}'
        if layer.filter is None or layer.bias is None:
            raise ValueError(f'{where}: no weights (expected weights = {{filter, bias}})')
        w = _hwcn_to_oihw(np.asarray(layer.filter, dtype=np.float32), w_shape, where)
        b = torch.from_numpy(np.ascontiguousarray(np.asarray(layer.bias, dtype=np.float32).reshape(-1)))
        if b.numel() != w_shape[0]:
            raise ValueError(f'{where}: bias of {b.numel()} values; expected {w_shape[0]}')
        return w, b

    notes = ['fc8 (ImageNet classes) dropped']
    for trunk in trunks:
        convs_ours = [getattr(model.get_submodule(f'{trunk}.features'), str(i)) for i in CNNF_CONVS]
        for n, (i, layer, conv) in enumerate(zip(CNNF_CONVS, convs[:5], convs_ours, strict=True)):
            label = f'conv{n + 1}'
            stride = layer.stride if layer.stride.size else np.ones(1)
            pad = layer.pad if layer.pad.size else np.zeros(1)
            if set(stride.tolist()) != {float(conv.stride[0])} or set(pad.tolist()) != {float(conv.padding[0])}:
                raise ValueError(f'{what}: layer {layer.name or label} has stride {stride.tolist()}, pad '
                                 f'{pad.tolist()}; CNN-F\'s {label} has stride {conv.stride[0]}, pad {conv.padding[0]}')
            w, b = layer_tensors(layer, own[f'{trunk}.features.{i}.weight'].shape, label)
            if n == 0:
                w, b = fold_input_normalisation(w, b, average, mean, std)
            for p, t in (('weight', w), ('bias', b)):
                out[f'{trunk}.features.{i}.{p}'] = t.clone()
                mapping[f'{trunk}.features.{i}.{p}'] = f'{layer.name or label}.{p}'
    notes.append(f'conv1 folds the input conversion: MatConvNet average {np.round(average, 3).tolist()} (0..255), '
                 f'timm mean {list(mean)} / std {list(std)}')
    for mlp in _mlps(model):
        for fc, layer, label in (('fc6', convs[5], 'fc6'), ('fc7', convs[6], 'fc7')):
            w, b = layer_tensors(layer, own[f'{mlp}.{fc}.weight'].shape, label)
            for p, t in (('weight', w), ('bias', b)):
                out[f'{mlp}.{fc}.{p}'] = t.clone()
                mapping[f'{mlp}.{fc}.{p}'] = f'{layer.name or label}.{p}'
    _check_fits(out, model, model_name, what)
    return ConvertReport(model=model_name, source='matconvnet-vggf', path=what, tensors=out, mapping=mapping,
                         notes=notes)


# ---------------------------------------------------------------------------------------------- files
def _check_out(out: PathLike) -> Path:
    out = Path(out)
    if out.suffix != '.safetensors':
        raise ValueError(f'{out}: the output must be a .safetensors file (deephash-train --init reads it)')
    return out


def save_init_file(report: ConvertReport, out: PathLike) -> Path:
    """Write the converted tensors as safetensors at ``out`` (atomically; the same conversion, the same bytes)."""
    out = _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, safetensors_bytes(report.tensors, report.metadata()))
    return out


def download_source(kind: str, path: PathLike) -> Path:
    """Fetch the published source file to ``path`` (torchvision's file is checked against its hash prefix)."""
    path = Path(path)
    url = SOURCE_URLS[kind]
    path.parent.mkdir(parents=True, exist_ok=True)
    # torchvision's file name carries the first hex digits of its sha256; torch.hub checks them
    hash_prefix = url.rsplit('-', 1)[-1].split('.')[0] if kind == 'torchvision-alexnet' else None
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=hash_prefix, progress=False)
    except (OSError, RuntimeError) as e:
        raise FileNotFoundError(f'{path}: could not download {url} ({e}); fetch it by hand when online') from e
    return path


def convert_file(kind: str, path: PathLike, model_name: str, out: PathLike, download: bool = False) -> ConvertReport:
    """Convert ``path`` (``kind``: 'torchvision-alexnet' or 'matconvnet-vggf') for ``model_name``, write ``out``."""
    if kind not in SOURCE_URLS:
        raise ValueError(f'unknown source {kind!r}; expected one of {tuple(SOURCE_URLS)}')
    _check_out(out)  # before minutes of downloading and converting
    if download and not Path(path).is_file():
        download_source(kind, path)
    convert = convert_torchvision_alexnet if kind == 'torchvision-alexnet' else convert_matconvnet_vggf
    report = convert(path, model_name)
    save_init_file(report, out)
    return report
