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
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .contract import HashingMixin, check_images, filter_state_dict, resolve_bits
from .head import HashLayer
from .safe_loading import check_pretrained_source, checking_pretrained

__all__ = ['BackboneHash', 'hash_model', 'hash_backbone', 'GENERIC_ARCH']

GENERIC_ARCH = 'hash_backbone'
_REMOTE_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:')


class BackboneHash(HashingMixin, nn.Module):
    """A timm backbone (without classifier) followed by tanh hash layer(s)."""

    def __init__(self, backbone: nn.Module, bits: Union[int, Sequence[int]] = 64,
                 num_classes: Optional[int] = None, num_labels: int = 0) -> None:
        super().__init__()
        dd = get_device_dtype(backbone)
        self.backbone = backbone
        self._init_codes(bits, num_classes, num_labels)
        self.in_chans = int(getattr(backbone, 'in_chans', 3))
        cfg_min = backbone.pretrained_cfg.get('min_input_size')
        self.min_input_size = int(cfg_min[-1]) if cfg_min else 1
        self.num_features = backbone.num_features
        self.head_hidden_size = getattr(backbone, 'head_hidden_size', backbone.num_features)
        self._reset_hash(**dd)
        self.pretrained_cfg: Dict[str, Any] = dict(
            backbone.pretrained_cfg,
            num_classes=self.num_classes,
            classifier=tuple(f'hash.fc.{i}' for i in range(len(self.bits))),
            first_conv=f"backbone.{backbone.pretrained_cfg.get('first_conv')}",
        )
        self.default_cfg = self.pretrained_cfg

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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_chans, self.min_input_size)
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
) -> BackboneHash:
    """Hash model on timm backbone ``backbone`` (any name ``timm.list_models()`` knows).

    ``pretrained`` loads the backbone's own timm weights (e.g. ImageNet); the hash layers start
    fresh. Extra keyword arguments go to ``timm.create_model`` for the backbone.
    """
    _check_backbone(backbone)
    model = _build(backbone, bits=bits, num_labels=num_labels, backbone_pretrained=pretrained, **kwargs)
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture=GENERIC_ARCH, tag=None, hf_hub_id=None)
    model.default_cfg = model.pretrained_cfg
    model._model_args = dict(backbone=backbone, bits=list(model.bits), **kwargs)  # what timm rebuilds it from
    return model


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
    return BackboneHash(net, bits=tuple(bits) if isinstance(bits, (list, tuple)) else bits,
                        num_classes=num_classes, num_labels=num_labels)


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
    with checking_pretrained(pretrained, GENERIC_ARCH):
        model = build_model_with_cfg(_build, GENERIC_ARCH, pretrained, backbone=backbone, bits=bits,
                                     pretrained_filter_fn=filter_state_dict, **kwargs)
    if not pretrained:  # a fresh model takes its backbone's preprocessing; loaded weights keep the saved one
        model.pretrained_cfg = dict(model.backbone.pretrained_cfg, **{
            k: model.pretrained_cfg[k] for k in ('architecture', 'license') if k in model.pretrained_cfg},
            num_classes=model.num_classes, tag=None, hf_hub_id=None)
        model.default_cfg = model.pretrained_cfg
    return model
