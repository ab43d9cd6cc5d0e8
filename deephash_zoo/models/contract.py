"""What every deephash-zoo model promises beyond timm: code lengths, ``encode``, input checks.

``forward`` returns relaxed codes in (-1, 1) (tanh), all lengths concatenated in ascending order;
``encode`` turns them into sign codes in {-1, +1} (int8) or bits packed 8 per byte in
``numpy.packbits`` order (first bit = most significant, +1 -> 1, -1 -> 0), which is what FAISS
binary indexes take. A relaxed value of exactly 0 encodes as +1.
"""
import operator
import threading
import weakref
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import register_notrace_function

from .head import FcMlp
from .safe_loading import check_pretrained_state

__all__ = ['HashingMixin', 'check_images', 'check_input_size', 'resolve_bits', 'code_lengths', 'pack_signs',
           'init_weights', 'HUB_ORG', 'HUB_WEIGHTS', 'filter_state_dict', 'entry_args']

HUB_ORG = 'deephash-zoo'  # one Hugging Face organisation holds every published checkpoint
# the published weights file, named in every published cfg (hf_hub_filename): timm then reads it with safetensors
# and nothing else; without it timm falls back to unpickling pytorch_model.bin when the .safetensors is missing
HUB_WEIGHTS = 'model.safetensors'


@register_notrace_function  # reason: shape checks are Python control flow; FX keeps the call as a leaf
def check_images(x: torch.Tensor, in_chans: int, min_size: int) -> None:
    """Refuse what the network cannot take, with the expected shape in the message."""
    expected = '(batch, ' + str(in_chans) + ', height, width) float images'
    if x.dim() != 4:
        raise ValueError('expected ' + expected + ', got a tensor of rank ' + str(x.dim()))
    if x.shape[1] != in_chans:
        raise ValueError('expected ' + expected + ', got ' + str(x.shape[1]) + ' channels')
    if not x.is_floating_point():
        kind = 'a boolean' if x.dtype == torch.bool else 'a complex' if x.is_complex() else 'an integer'
        raise ValueError('expected ' + expected + ' (normalised, floating point), got ' + kind + ' tensor; '
                         'convert with the model transform (timm.data.create_transform)')
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError('expected images of at least ' + str(min_size) + 'x' + str(min_size) + ' pixels, got '
                         + str(x.shape[2]) + 'x' + str(x.shape[3]))


def check_input_size(img_size: Any, min_size: int, model: str = 'this model', flag: str = 'img_size') -> None:
    """Refuse an input side ``model`` cannot take, 0 included (no size may silently mean the default); every
    command's ``--img-size`` and ``model_transform`` say it in the same words."""
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < min_size:
        raise ValueError(f'{flag} must be an integer >= {min_size} for {model}, got {img_size!r}')


def code_lengths(bits: Any) -> Tuple[int, ...]:
    """``bits=`` as a tuple of lengths: one positive int, or a non-empty list of them (no floats, bools or
    strings, which int() would quietly accept or mangle)."""
    items = [bits] if isinstance(bits, (int, float, str, bool)) else bits
    try:
        items = list(items)
    except TypeError:
        items = None
    if not items or not all(isinstance(b, int) and not isinstance(b, bool) for b in items):
        raise ValueError(f'bits must be a positive code length or a non-empty list of them, got {bits!r}')
    return tuple(int(b) for b in items)


def entry_args(defaults: Dict[str, Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """An entrypoint's constructor arguments: the name's (its code lengths, attention) under the caller's.

    The constructor reads ``bits`` as the name's default, which ``num_classes`` overrides, so the caller's
    ``bits=`` must not meet another ``num_classes``: where the caller gave both, they must agree; where timm set one
    from a checkpoint's config.json (``pretrained_model_args``), the caller's other one wins, as timm's
    ``num_classes=`` gives a fresh head. ``bits=(64,)`` on a 32-bit checkpoint built 32 bits and said nothing."""
    kwargs = dict(kwargs)
    saved = kwargs.get('pretrained_model_args') or {}

    def callers(key: str) -> bool:
        return kwargs.get(key) is not None and (key not in saved or saved[key] != kwargs[key])

    bits, num_classes = kwargs.get('bits'), kwargs.get('num_classes')
    if bits is not None and isinstance(num_classes, int) and not isinstance(num_classes, bool):
        total = sum(code_lengths(bits))
        if num_classes != total:
            if callers('bits') and callers('num_classes'):
                raise ValueError(f'bits={bits!r} makes codes {total} bits wide in all, but num_classes='
                                 f'{num_classes} asks for {num_classes}: give one of them')
            if callers('bits'):  # the checkpoint's width gives way to the lengths asked for (a fresh head)
                kwargs['num_classes'] = total
    return dict(defaults, **kwargs)


def resolve_bits(num_classes: Optional[int], default_bits: Sequence[int], bits: Optional[Sequence[int]] = None
                 ) -> Tuple[int, ...]:
    """Code lengths from timm's ``num_classes`` and an optional explicit ``bits``.

    ``num_classes`` is the total code width. When it is the sum of the model's lengths (or None)
    the model keeps its lengths; 0 removes the hash layer; any other value gives one code of that
    many bits (timm's generic ``num_classes=`` knob). ``bits`` sets the lengths exactly.
    """
    original = num_classes
    if num_classes is not None:
        try:  # any integer type (numpy's too); not a str ('32' > 0 was a TypeError), a float (32.5 became 32) or a bool
            num_classes = None if isinstance(num_classes, bool) else operator.index(num_classes)
        except TypeError:
            num_classes = None
        if num_classes is None:
            raise ValueError(f'num_classes must be an integer >= 0 (the total code width; 0: no hash layer), '
                             f'got {original!r}')
    if bits is not None:
        out = code_lengths(bits)
        if num_classes is not None and num_classes != sum(out):
            raise ValueError(f'num_classes={num_classes} does not match bits={out} (sum {sum(out)})')
    elif num_classes is None or num_classes == sum(default_bits):
        out = tuple(default_bits)
    elif num_classes == 0:
        out = ()
    elif num_classes > 0:
        out = (int(num_classes),)
    else:
        raise ValueError(f'num_classes must be >= 0, got {num_classes}')
    if any(b <= 0 for b in out):
        raise ValueError(f'code lengths must be positive, got {out}')
    if list(out) != sorted(set(out)):
        raise ValueError(f'code lengths must be distinct and ascending, got {out}')
    return out


def init_weights(model: nn.Module) -> None:
    """Initialisation for training from scratch, as the reference trunks are trained (ImageNet weights
    replace it): He fan_in normal for every convolution (conv1-5, fc6/fc7, attention and SE; each feeds a
    ReLU or a learned gate), LeCun normal (std 1/sqrt(fan_in)) for Linear layers (the tanh hash layers,
    the label classifier), zero biases. Both keep an activation's scale through the depth of the network;
    the earlier fan_out / std-0.01 choice shrank it (fc6 std 0.0037 against He's 0.0147) until the part of
    the codes shared by all images outweighed what tells images apart. fc6/fc7 (:class:`FcMlp`) keep what
    FcMlp drew by the same rule when it was built, so their 54 M weights a stream or branch are drawn once;
    ``FcMlp.reset_parameters`` draws them again."""
    drawn = {id(fc) for m in model.modules() if isinstance(m, FcMlp) for fc in (m.fc6, m.fc7)}
    for m in model.modules():
        if id(m) in drawn:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='linear')
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def filter_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ``pretrained_filter_fn``: published weights carry DATH's training-only label classifier;
    a model created without one (``num_labels=0``, the inference default) loads everything else."""
    if getattr(model, 'aux_classifier', None) is None:
        return {k: v for k, v in state_dict.items() if not k.startswith('aux_classifier.')}
    return state_dict


_ENCODE_LOCKS: 'weakref.WeakKeyDictionary[nn.Module, threading.Lock]' = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _eval_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode without grad, the model's mode left as it was.

    A training model is switched to eval for the forward under a lock of its own, and its mode is read under that
    lock: two threads encoding with one training model left it in eval mode, or ran a forward in train mode
    (BatchNorm statistics updated). A model already in eval mode runs without holding the lock, so threads serving
    one eval model encode at once."""
    with _LOCKS_LOCK:
        lock = _ENCODE_LOCKS.setdefault(model, threading.Lock())
    with lock:
        was_training = model.training
        if was_training:
            model.eval()
            try:
                with torch.no_grad():
                    return model(x)
            finally:
                model.train(True)
    with torch.no_grad():
        return model(x)


def pack_signs(signs: torch.Tensor) -> torch.Tensor:
    """Pack {-1,+1} codes (n, bits) into uint8 (n, ceil(bits/8)) exactly as ``numpy.packbits(axis=1)``."""
    n, bits = signs.shape
    if n == 0:  # reshape(0, -1, 8) cannot infer the middle size
        return torch.zeros(0, -(-bits // 8), dtype=torch.uint8, device=signs.device)
    ones = (signs > 0).to(torch.uint8)
    pad = (-bits) % 8
    if pad:
        ones = torch.cat([ones, ones.new_zeros(n, pad)], dim=1)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=signs.device)
    return (ones.reshape(n, -1, 8) * weights).sum(dim=2, dtype=torch.uint8)


class HashingMixin:
    """``encode`` and code-length bookkeeping shared by every hash model.

    Subclasses set ``bits`` (tuple of current code lengths), ``in_chans`` and ``min_input_size``
    (no class-level annotations: TorchScript would read them and cannot type ``Tuple[int, ...]``).
    """

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s; pretrained weights an entrypoint loads are checked first (``checking_pretrained``),
        and a label classifier they do not hold (``num_labels=``) keeps its fresh initialisation."""
        fresh_labels = check_pretrained_state(self, state_dict, strict)
        return super().load_state_dict(state_dict, strict=strict and not fresh_labels, assign=assign)

    def _init_codes(self, bits: Union[int, Sequence[int]], num_classes: Optional[int], num_labels: int) -> None:
        """Code lengths the model is built for (``default_bits``), current ones, label classifier slot."""
        self.default_bits = code_lengths(bits)
        resolve_bits(None, self.default_bits)  # validates the lengths the model is built for
        self.bits = resolve_bits(num_classes, self.default_bits)
        self.num_classes = sum(self.bits)
        try:  # any integer type (numpy's too), not a bool, a float or a negative count
            count = -1 if isinstance(num_labels, bool) else operator.index(num_labels)
        except TypeError:
            count = -1
        if count < 0:
            raise ValueError(f'num_labels must be an integer >= 0 (0: no label classifier), got {num_labels!r}')
        self.num_labels = count
        self.aux_classifier = None

    def _reset_label_classifier(self, **dd: Any) -> None:
        """(Re)build the auxiliary label classifier on the codes when the model has labels and codes."""
        self.aux_classifier = None
        if self.num_labels and self.bits:
            self.aux_classifier = nn.Linear(self.num_classes, self.num_labels, **dd)
            nn.init.kaiming_normal_(self.aux_classifier.weight, mode='fan_in', nonlinearity='linear')
            nn.init.zeros_(self.aux_classifier.bias)
            self.aux_classifier.train(self.training)

    @torch.jit.ignore
    def label_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """The auxiliary label classifier on the codes (DATH's classification loss)."""
        if self.aux_classifier is None:
            raise ValueError('this model has no label classifier; create it with num_labels=<dataset labels>')
        return self.aux_classifier(codes)

    @torch.jit.ignore
    def code_slices(self) -> Dict[int, slice]:
        """Where each length sits in ``forward``'s output."""
        out, start = {}, 0
        for b in self.bits:
            out[b] = slice(start, start + b)
            start += b
        return out

    @torch.jit.ignore
    def split_codes(self, codes: torch.Tensor) -> Dict[int, torch.Tensor]:
        """``forward`` output -> {length: codes of that length}."""
        width = sum(self.bits)
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] != width:
            shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
            raise ValueError(f'expected (batch, {width}) codes (lengths {self.bits}), got {shape}')
        return {b: codes[:, s] for b, s in self.code_slices().items()}

    @torch.jit.ignore
    def encode(self, x: torch.Tensor, bits: Optional[int] = None, packed: bool = False) -> torch.Tensor:
        """Binary codes of images ``x`` (eval mode, no grad).

        Returns int8 {-1,+1} codes of shape (batch, bits), or with ``packed`` uint8 of shape
        (batch, ceil(bits/8)). ``bits=None`` gives all lengths concatenated (multi-length models).
        """
        if not isinstance(x, torch.Tensor):  # a numpy array would fail deep inside with an AttributeError
            kind = f'{type(x).__module__}.{type(x).__qualname__}'.removeprefix('builtins.')
            hint = '; convert with torch.from_numpy(x)' if kind == 'numpy.ndarray' else ''
            raise ValueError(f'encode expects a torch.Tensor of (batch, {self.in_chans}, height, width) float images, '
                             f'got {kind}{hint}')
        if not self.bits:
            raise ValueError('this model has no hash layer (num_classes=0); nothing to encode')
        slices = self.code_slices()
        if bits is not None and (bits not in slices or isinstance(bits, (bool, float))):  # 32.0 == 32, True == 1
            # bits='32' must not read as 32, nor 32.0 or True pass as lengths
            kind = '' if isinstance(bits, int) and not isinstance(bits, bool) else f' (a {type(bits).__name__})'
            raise ValueError(f'this model has code lengths {self.bits}; got bits={bits!r}{kind}')
        check_images(x, self.in_chans, self.min_input_size)
        if not bool(torch.isfinite(x).all()):
            raise ValueError('images contain NaN or infinite values')
        weight = next(self.parameters(), None)
        if weight is not None and x.dtype != weight.dtype:  # fp16 / fp64 images: codes of the model's precision
            x = x.to(weight.dtype)
        relaxed = _eval_forward(self, x)
        if bits is not None:
            relaxed = relaxed[:, slices[bits]]
        if not bool(torch.isfinite(relaxed).all()):  # NaN >= 0 is False: every such bit would read -1, silently
            raise ValueError('the model gave NaN codes for finite images: its weights are broken (NaN or infinite); '
                             'load them with deephash_zoo.hub.load_checkpoint, which refuses such weights')
        signs = torch.where(relaxed >= 0, 1, -1).to(torch.int8)
        return pack_signs(signs) if packed else signs
