"""The papers' hash head on any timm backbone: ``hash_model('resnet50', bits=64)``.

The backbone keeps its own features and pooling (``num_classes=0``); its pre-logits vector feeds
one tanh hash layer per code length. The result honours the same contract as DATH/ADMTH
(``forward`` relaxed codes, ``encode``, timm's head API), so training, evaluation and export
work unchanged.

Such a model is registered with timm as the generic architecture ``hash_backbone`` with
``model_args={'backbone': ..., 'bits': [...]}``: a saved checkpoint names that, so ``load_checkpoint``,
``local-dir:`` and ``hf-hub:`` rebuild it like any of our models. ``backbone`` may itself be an
``hf-hub:`` or ``local-dir:`` name.
"""
import difflib
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import get_device_dtype, register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.optim import auto_group_layers

from .contract import HashingMixin, check_images, filter_state_dict, resolve_bits
from .head import HashLayer
from .safe_loading import check_pretrained_source, checking_pretrained

__all__ = ['BackboneHash', 'hash_model', 'hash_backbone', 'GENERIC_ARCH', 'generic_cfg', 'check_fixed_size']

GENERIC_ARCH = 'hash_backbone'
_REMOTE_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')
PREFIX = 'backbone.'  # where the backbone's names sit in this model
# timm's feature-extraction keywords: they make a features model of the backbone, without hash layers
_FEATURE_KWARGS = ('features_only', 'out_indices', 'feature_cls')
# preprocessing a features model takes from the hash checkpoint it is cut from
_DATA_CFG_KEYS = ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
# a regex anchor (^) at the start of a pattern or of an alternative / group: re.match anchors there anyway
_ANCHOR = re.compile(r'(^|(?<!\\)[|(])\^')


def _prefixed(name: Any) -> Any:
    """A backbone module name (or tuple of them, or None) as named in this model."""
    if name is None:
        return None
    if isinstance(name, str):
        return PREFIX + name
    return tuple(PREFIX + n for n in name)


def _prefixed_regex(pattern: str) -> str:
    """A backbone ``group_matcher`` regex, matching the same parameters under ``backbone.``; capture groups
    (which order the layers) keep their numbers."""
    return '^' + re.escape(PREFIX) + '(?:' + _ANCHOR.sub(r'\1', pattern) + ')'


def _prefixed_matcher(matcher: Union[Dict[str, Any], Callable]) -> Union[Dict[str, Any], Callable]:
    """A backbone's ``group_matcher`` for this model's names; names outside the backbone (the hash layers) match
    nothing, so timm puts them in the last group with the backbone's own unmatched head parameters."""
    if callable(matcher):
        def grouped(name: str) -> Any:
            return matcher(name[len(PREFIX):]) if name.startswith(PREFIX) else float('inf')
        return grouped
    out: Dict[str, Any] = {}
    for group, spec in matcher.items():
        if isinstance(spec, str):
            out[group] = _prefixed_regex(spec)
        elif isinstance(spec, (list, tuple)):
            out[group] = [(_prefixed_regex(regex), suffix) for regex, suffix in spec]
        else:
            out[group] = spec
    return out


def _pooled(backbone: nn.Module) -> bool:
    """Whether the backbone's features end pooled to a vector (True where it keeps no pool setting to read)."""
    pool = getattr(backbone, 'global_pool', None)
    if pool is None:
        pool = getattr(getattr(backbone, 'head', None), 'global_pool', None)
    pool_type = getattr(pool, 'pool_type', pool)
    return not (isinstance(pool_type, str) and pool_type == '')


def _fixed_input_size(backbone: nn.Module) -> Tuple[int, int]:
    """(height, width) a patch-embedding backbone requires, (0, 0) where any size goes."""
    embed = getattr(backbone, 'patch_embed', None)
    size = getattr(embed, 'img_size', None)
    if not getattr(embed, 'strict_img_size', False) or getattr(embed, 'dynamic_img_size', False) or not size:
        return 0, 0
    return int(size[0]), int(size[1])


@register_notrace_function  # reason: shape checks are Python control flow; FX keeps the call as a leaf
def check_fixed_size(x: torch.Tensor, height: int, width: int) -> None:
    """A fixed-size backbone (a ViT built for one ``img_size``) asserts deep inside; say which size it takes."""
    if height > 0 and (x.shape[2] != height or x.shape[3] != width):
        raise ValueError('this backbone takes ' + str(height) + 'x' + str(width) + ' images only, got '
                         + str(x.shape[2]) + 'x' + str(x.shape[3]) + ' (create it with img_size=' + str(height)
                         + ', or dynamic_img_size=True)')


_UNPOOLED = ("global_pool='' leaves the backbone's unpooled feature map, and a hash layer needs a pooled vector: "
             "use a pool (e.g. 'avg'), or num_classes=0 for the unpooled features")


class BackboneHash(HashingMixin, nn.Module):
    """A timm backbone (without classifier) followed by tanh hash layer(s)."""

    def __init__(self, backbone: nn.Module, bits: Union[int, Sequence[int]] = 64,
                 num_classes: Optional[int] = None, num_labels: int = 0) -> None:
        super().__init__()
        dd = get_device_dtype(backbone)
        self.backbone = backbone
        self._init_codes(bits, num_classes, num_labels)
        if self.bits and not _pooled(backbone):
            raise ValueError(_UNPOOLED)
        self.in_chans = int(getattr(backbone, 'in_chans', 3))
        cfg_min = backbone.pretrained_cfg.get('min_input_size')
        self.min_input_size = int(cfg_min[-1]) if cfg_min else 1
        self.fixed_height, self.fixed_width = _fixed_input_size(backbone)
        self.num_features = backbone.num_features
        self.head_hidden_size = getattr(backbone, 'head_hidden_size', backbone.num_features)
        if getattr(backbone, 'feature_info', None) is not None:  # timm's feature metadata, in this model's names
            self.feature_info = [dict(info, module=_prefixed(info.get('module'))) for info in backbone.feature_info]
        self._reset_hash(**dd)
        self.pretrained_cfg: Dict[str, Any] = self.hash_cfg()
        self.default_cfg = self.pretrained_cfg
        # timm keeps the input stem it adapts for in_chans (and saves) in the model's traits, which the
        # generic cfg it builds hash_backbone with cannot name: declare the backbone's, in this model's names
        self._traits = {'first_conv': self.pretrained_cfg['first_conv']}

    def hash_cfg(self) -> Dict[str, Any]:
        """The backbone's pretrained_cfg with this model's names: timm adapts ``first_conv`` for ``in_chans`` and
        drops ``classifier`` for another ``num_classes`` when it loads the weights."""
        cfg = self.backbone.pretrained_cfg
        first_conv = getattr(self.backbone, '_traits', {}).get('first_conv', cfg.get('first_conv'))
        return dict(cfg, num_classes=self.num_classes, first_conv=_prefixed(first_conv),
                    classifier=tuple(f'hash.fc.{i}' for i in range(len(self.bits))))

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The backbone's (ViT's pos_embed, cls_token, ...): timm's optimizer factory reads them by parameter name."""
        names = getattr(self.backbone, 'no_weight_decay', None)
        return {PREFIX + n for n in names()} if callable(names) else set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Union[Dict[str, Any], Callable]:
        """The backbone's layer groups (layer decay); the hash layers join its head, in the last group."""
        if not hasattr(self.backbone, 'group_matcher'):  # timm's own fallback, as it groups the plain backbone
            layers = auto_group_layers(self)
            return lambda name: layers.get(name, float('inf'))
        return _prefixed_matcher(self.backbone.group_matcher(coarse=coarse))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing is the backbone's: the hash layers hold next to no activations."""
        if not hasattr(self.backbone, 'set_grad_checkpointing'):
            raise ValueError(f'backbone {type(self.backbone).__name__} does not support gradient checkpointing')
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              **kwargs: Any) -> Any:
        """The backbone's intermediate features (timm's API, ``FeatureGetterNet``), after the input checks."""
        if not hasattr(self.backbone, 'forward_intermediates'):
            raise ValueError(f'backbone {type(self.backbone).__name__} has no forward_intermediates')
        self._check_input(x)
        return self.backbone.forward_intermediates(x, indices=indices, **kwargs)

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """The backbone's pruning; ``prune_head`` removes the hash layers too (its features are unpooled)."""
        if not hasattr(self.backbone, 'prune_intermediate_layers'):
            raise ValueError(f'backbone {type(self.backbone).__name__} has no prune_intermediate_layers')
        kept = self.backbone.prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_head:
            self.head_hidden_size = getattr(self.backbone, 'head_hidden_size', self.backbone.num_features)
            self.reset_classifier(0)
        return kept

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.hash

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         bits: Optional[Sequence[int]] = None) -> None:
        """New hash layer(s), as ``HashNet.reset_classifier``; ``global_pool`` goes to the backbone.

        ``reset_classifier(0, '')`` gives the backbone's unpooled features, as on any timm model; a
        hash layer needs a pooled vector, so ``''`` with bits is refused.
        """
        new_bits = resolve_bits(num_classes, self.default_bits, bits)
        if global_pool is None and new_bits and not _pooled(self.backbone):  # after reset_classifier(0, '')
            raise ValueError(_UNPOOLED)
        if global_pool is not None:
            if global_pool == '' and new_bits:
                raise ValueError("global_pool='' leaves a feature map, and a hash layer needs a pooled vector: "
                                 "reset_classifier(0, '') gives the unpooled features without one")
            try:
                self.backbone.reset_classifier(0, global_pool)
            except (AssertionError, ValueError, NotImplementedError) as err:
                raise ValueError(f'global_pool {global_pool!r} is not one this backbone takes: {err}') from None
            self.head_hidden_size = getattr(self.backbone, 'head_hidden_size', self.backbone.num_features)
            recorded = getattr(self, '_model_args', None)
            if isinstance(recorded, dict):  # a saved checkpoint rebuilds the backbone with this pool
                self._model_args = dict(recorded, global_pool=global_pool)
        self.bits = new_bits
        self.num_classes = sum(self.bits)
        self._reset_hash(**get_device_dtype(self))

    def _reset_hash(self, **dd: Any) -> None:
        self.hash = HashLayer(self.head_hidden_size, self.bits, **dd)
        for fc in self.hash.fc:
            nn.init.normal_(fc.weight, 0, 0.01)
            nn.init.zeros_(fc.bias)
        self.hash.train(self.training)
        self._reset_label_classifier(**dd)

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.in_chans, self.min_input_size)
        check_fixed_size(x, self.fixed_height, self.fixed_width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.backbone.forward_head(x, pre_logits=True)
        return x if pre_logits else self.hash(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def hash_model(
        backbone: str,
        bits: Union[int, Sequence[int]] = 64,
        pretrained: bool = False,
        num_labels: int = 0,
        **kwargs: Any,
) -> Union[BackboneHash, nn.Module]:
    """Hash model on timm backbone ``backbone`` (any name ``timm.list_models()`` knows).

    ``pretrained`` loads the backbone's own timm weights (e.g. ImageNet); the hash layers start
    fresh. Extra keyword arguments go to ``timm.create_model`` for the backbone; ``features_only=True``
    gives the backbone's own timm feature extractor (hash layers read pooled features, so it has none).
    """
    _check_backbone(backbone)
    if kwargs.get('features_only'):
        return timm.create_model(backbone, pretrained=pretrained, num_classes=0, **kwargs)
    model = _build(backbone, bits=bits, num_labels=num_labels, backbone_pretrained=pretrained, **kwargs)
    _set_cfg(model, generic_cfg(model))
    model._model_args = dict(backbone=backbone, bits=list(model.bits), **kwargs)  # what timm rebuilds it from
    return model


def generic_cfg(model: BackboneHash, overlay: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """pretrained_cfg of a fresh ``hash_backbone`` model, however it is created: the backbone's preprocessing in
    this model's names, then the caller's ``pretrained_cfg_overlay``."""
    return dict(model.hash_cfg(), architecture=GENERIC_ARCH, tag=None, hf_hub_id=None, **(overlay or {}))


def _set_cfg(model: nn.Module, cfg: Dict[str, Any]) -> None:
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name for it


def _backbone_features(model: BackboneHash, pretrained: bool, features: Dict[str, Any]) -> nn.Module:
    """The backbone's own timm feature extractor (default ``out_indices`` and feature class, as
    ``timm.create_model(backbone, features_only=True)``), holding ``model``'s backbone weights when they were
    loaded; the checkpoint's preprocessing comes along."""
    name, kwargs = model.backbone_spec
    if not pretrained:
        return timm.create_model(name, num_classes=0, **kwargs, **features)
    # timm loads a state dict before it wraps the model; first_conv None: the weights already have in_chans
    overlay = dict({k: model.pretrained_cfg[k] for k in _DATA_CFG_KEYS if k in model.pretrained_cfg},
                   source='', state_dict=model.backbone.state_dict(), first_conv=None, num_classes=0)
    net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0,
                            **kwargs, **features)
    _set_cfg(net, {k: v for k, v in net.pretrained_cfg.items() if k != 'state_dict'})
    return net


def _check_backbone(backbone: str) -> None:
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f'backbone must be a timm model name, got {backbone!r}')
    if backbone.startswith(_REMOTE_PREFIXES):  # timm resolves those itself (and says so when it cannot)
        return
    known: List[str] = timm.list_models()
    if backbone not in known and backbone.split('.')[0] not in known:
        close = difflib.get_close_matches(backbone, known, n=3)
        hint = f'; did you mean {", ".join(close)}?' if close else ''
        raise ValueError(f'unknown timm backbone {backbone!r}{hint}')


def _build(backbone: str, bits: Union[int, Sequence[int]] = 64, num_classes: Optional[int] = None,
           num_labels: int = 0, backbone_pretrained: bool = False, **kwargs: Any) -> BackboneHash:
    net = timm.create_model(backbone, pretrained=backbone_pretrained, num_classes=0, **kwargs)
    model = BackboneHash(net, bits=tuple(bits) if isinstance(bits, (list, tuple)) else bits,
                         num_classes=num_classes, num_labels=num_labels)
    model.backbone_spec = (backbone, kwargs)  # how to create the backbone again (features_only)
    return model


default_cfgs = generate_default_cfgs({
    # num_classes -1: timm passes none (the code width comes from bits); preprocessing comes from the backbone
    GENERIC_ARCH: {'url': '', 'num_classes': -1, 'input_size': (3, 224, 224), 'license': 'apache-2.0'},
})


@register_model
def hash_backbone(pretrained: bool = False, backbone: str = 'resnet18', bits: Union[int, Sequence[int]] = 64,
                  **kwargs: Any) -> BackboneHash:
    """Tanh hash layer(s) on any timm backbone: what ``hash_model`` checkpoints are saved and loaded as."""
    check_pretrained_source(pretrained, kwargs)
    _check_backbone(backbone)
    features = {k: kwargs.pop(k) for k in _FEATURE_KWARGS if k in kwargs} if kwargs.get('features_only') else {}
    overlay = kwargs.get('pretrained_cfg_overlay')
    with checking_pretrained(pretrained, GENERIC_ARCH, kwargs):
        model = build_model_with_cfg(_build, GENERIC_ARCH, pretrained, backbone=backbone, bits=bits,
                                     pretrained_filter_fn=filter_state_dict, **kwargs)
    if not pretrained:  # a fresh model takes its backbone's preprocessing; loaded weights keep the saved one
        _set_cfg(model, generic_cfg(model, overlay))
    return _backbone_features(model, pretrained, features) if features else model
