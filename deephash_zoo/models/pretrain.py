"""The pretraining stage's model, in place of the ImageNet weights both papers start from.

A :class:`TrunkClassifier` is one trunk (AlexNet for DATH, CNN-F for ADMTH), one fc6/fc7 and a linear
classifier over the training set's labels, trained with cross-entropy as the ImageNet classifiers
were. Its weights, less the classifier, form a *trunk file* (safetensors, metadata
``format=deephash-trunk``); :func:`expand_trunk_state` maps them onto every stream of a DATH model
and every branch of an ADMTH model, as one ImageNet AlexNet initialises both DATH streams.
"""
import re
from typing import Dict, Tuple

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d

from .contract import init_weights
from .head import FcMlp
from .trunks import TRUNK_CHANNELS, ConvTrunk

__all__ = ['TrunkClassifier', 'TRUNK_FORMAT', 'TRUNK_ARCHS', 'trunk_arch_of', 'expand_trunk_state']

TRUNK_FORMAT = 'deephash-trunk'
TRUNK_ARCHS = ('alexnet', 'cnnf')
# a model's key -> the trunk file's key: every DATH stream and every ADMTH branch reads the one trunk
_KEY_MAP = ((re.compile(r'^streams\.\d+\.features\.'), 'trunk.features.'),
            (re.compile(r'^head\.mlps\.\d+\.'), 'mlp.'))


class TrunkClassifier(nn.Module):
    """Trunk (no attention) -> fc6/fc7 -> global average pool -> Linear(4096, num_labels)."""

    def __init__(self, arch: str, num_labels: int, drop_rate: float = 0.5, in_chans: int = 3) -> None:
        super().__init__()
        if arch not in TRUNK_ARCHS:
            raise ValueError(f'unknown trunk {arch!r}; expected one of {TRUNK_ARCHS}')
        if num_labels < 1:
            raise ValueError(f'num_labels must be at least 1, got {num_labels}')
        self.arch = arch
        self.in_chans = in_chans
        self.trunk = ConvTrunk(arch, 'none', attn_after_pool=arch == 'cnnf', in_chans=in_chans)
        self.mlp = FcMlp(TRUNK_CHANNELS, 4096, drop_rate=drop_rate)
        self.pool = SelectAdaptivePool2d(pool_type='avg', flatten=True)
        self.classifier = nn.Linear(4096, num_labels)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.mlp(self.trunk(x))))

    def trunk_state(self) -> Dict[str, torch.Tensor]:
        """The weights a hash model takes (everything but the classifier)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith('classifier.')}


def trunk_arch_of(model: nn.Module) -> str:
    """The trunk architecture of a DATH ('alexnet') or ADMTH ('cnnf') model."""
    trunks = [m.arch for m in model.modules() if isinstance(m, ConvTrunk)]
    if not trunks:
        raise ValueError(f'{type(model).__name__} has no AlexNet / CNN-F trunk to initialise from a trunk file')
    return trunks[0]


def expand_trunk_state(trunk: Dict[str, torch.Tensor], arch: str, model: nn.Module
                       ) -> Tuple[Dict[str, torch.Tensor], int]:
    """``(state for model, tensors of the trunk file used)``: the trunk file's conv and fc6/fc7 weights
    copied into every stream / branch of ``model``; attention, hash layers and classifiers stay as they are."""
    own = trunk_arch_of(model)
    if arch != own:
        raise ValueError(f'the trunk file holds a {arch} trunk, but {type(model).__name__} is built on {own}')
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for key, value in model.state_dict().items():
        source = key
        for pattern, repl in _KEY_MAP:
            source = pattern.sub(repl, source)
        if source in trunk:
            if trunk[source].shape != value.shape:
                raise ValueError(f'trunk tensor {source} has shape {tuple(trunk[source].shape)}, '
                                 f'{key} needs {tuple(value.shape)}')
            out[key] = trunk[source]
            used.add(source)
    missing = sorted(set(trunk) - used)
    if missing:
        raise ValueError(f'trunk tensors {missing[:3]} fit nowhere in {type(model).__name__}')
    return out, len(used)
