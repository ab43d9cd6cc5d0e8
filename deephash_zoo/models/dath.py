"""DATH: Dual Attention Triplet Hashing

Paper: `Dual Attention Triplet Hashing Network for Image Retrieval` - Jiang, Lian, Wang,
Frontiers in Neurorobotics 15:728161 (2021), https://doi.org/10.3389/fnbot.2021.728161

Two AlexNet streams see the same image; one has DANet's position attention on its conv5 map, the
other DANet's channel attention. Their fc7 outputs are summed, and a ``k``-unit tanh hash layer
replaces fc8. An auxiliary label classifier on the hash layer (``num_labels`` outputs) serves the
classification loss only; it is not timm's classifier (that is the hash layer).

Variants (the paper's ablations, Table 3):
* ``dath_s``: one AlexNet with position ("spatial") attention only.
* ``dath_c``: one AlexNet with channel attention only.
* ``dath_n``: one AlexNet, no attention.
* ``dath1``: one shared AlexNet trunk carrying both attention modules on its conv5 map, fused by
  their mean (the paper's Figure 8 did not survive; see DESIGN.md for this reading).
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from .contract import HUB_ORG, HUB_WEIGHTS, entry_args, init_weights
from .hashnet import HashNet, build_hash_net
from .head import HashHead
from .published import tags_of
from .safe_loading import register_constructor
from .trunks import ConvTrunk

__all__ = ['DATH']


class DATH(HashNet):
    """One or two AlexNet streams with attention, summed fc7, tanh hash layer(s)."""

    def __init__(
            self,
            attention: Sequence[str] = ('position', 'channel'),
            bits: Union[int, Sequence[int]] = 32,
            num_classes: Optional[int] = None,
            num_labels: int = 0,
            in_chans: int = 3,
            drop_rate: float = 0.5,
            global_pool: str = 'avg',
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            attention: one attention kind per AlexNet stream ('position', 'channel', 'dual', 'none').
            bits: code length(s); several give one hash layer each, concatenated in ascending order.
            num_classes: timm's head width; see ``resolve_bits`` (defaults to ``sum(bits)``).
            num_labels: outputs of the auxiliary label classifier (0: none, as for inference).
            in_chans: image channels.
            drop_rate: dropout before fc6 and fc7 (AlexNet's 0.5).
            global_pool: pool after fc7 for inputs above 224 ('' = no pool; see ``HashHead``).
        """
        super().__init__(bits, num_classes, num_labels, in_chans, drop_rate)
        dd = {'device': device, 'dtype': dtype}
        self.streams = nn.ModuleList([ConvTrunk('alexnet', a, in_chans=in_chans, **dd) for a in attention])
        self.num_features = sum(s.out_chs for s in self.streams)
        self.head = HashHead(
            self.num_features, len(self.streams), 'sum', self.bits,
            drop_rate=drop_rate, global_pool=global_pool, **dd,
        )
        self.head_hidden_size = self.head.hidden_size
        self._reset_label_classifier(**dd)
        self.feature_info = self._feature_info()
        # timm adapts these convolutions to another in_chans when it loads pretrained weights; pretrained_cfg's
        # first_conv names stream 0 only (checkpoints saved it so), and a second stream's was left at 3 channels
        self._traits = {'first_conv': tuple(f'streams.{i}.features.0' for i in range(len(self.streams)))}
        init_weights(self)

    def _feature_info(self) -> List[Dict[str, Any]]:
        # taps are both streams' maps concatenated along channels; names point into stream 0
        per_stream = [s.feature_info(f'streams.{i}.') for i, s in enumerate(self.streams)]
        info = []
        for taps in zip(*per_stream, strict=True):
            info.append(dict(taps[0], num_chs=sum(t['num_chs'] for t in taps)))
        return info

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^streams\.\d+\.features\.0',
            blocks=[(r'^streams\.\d+\.features\.(\d+)', None), (r'^streams\.\d+\.attn', (99,))],
        )

    def _forward_taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        per_stream = [s.forward_taps(x) for s in self.streams]
        return [torch.cat([t[i] for t in per_stream], dim=1) for i in range(len(self.feature_info))]

    def _trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        feats: List[torch.Tensor] = []
        for stream in self.streams:
            feats.append(stream(x))
        return torch.cat(feats, dim=1) if len(feats) > 1 else feats[0]


register_constructor(('dath',), DATH)


def _create_dath(variant: str, pretrained: bool = False, **kwargs: Any) -> DATH:
    feature_cls = kwargs.get('feature_cls')
    if kwargs.get('features_only') and len(kwargs.get('attention', ())) > 1 and feature_cls not in (None, 'getter'):
        # hooks and FX read one module's output; a tap is both streams' maps concatenated, which no module makes
        raise ValueError(f"{variant}: features_only with feature_cls={feature_cls!r} would give stream 0's maps "
                         "alone; the two streams' taps come from feature_cls='getter' (the default)")
    return build_hash_net(DATH, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'url': '', 'num_classes': 32, 'input_size': (3, 224, 224), 'pool_size': (6, 6),
        'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'streams.0.features.0', 'classifier': 'head.hash.fc.0',
        'license': 'apache-2.0',
        'paper_name': 'Dual Attention Triplet Hashing Network for Image Retrieval',
        'paper_ids': 'doi:10.3389/fnbot.2021.728161',
        **kwargs,
    }


_VARIANTS = {
    'dath_alexnet': ('position', 'channel'),
    'dath_s': ('position',),
    'dath_c': ('channel',),
    'dath_n': ('none',),
    'dath1': ('dual',),
}
BITS = (16, 32, 48, 64)

default_cfgs = generate_default_cfgs({
    f'{v}_{b}.{tag}': _cfg(num_classes=b, hf_hub_id=f'{HUB_ORG}/{v}_{b}.{tag}', hf_hub_filename=HUB_WEIGHTS)
    for v in _VARIANTS for b in BITS for tag in tags_of(f'{v}_{b}')
})


def _dath(variant: str, name_bits: int, pretrained: bool, **kwargs: Any) -> DATH:
    # ``bits=`` in kwargs (a checkpoint with other lengths) overrides the name's length
    model_args = dict(attention=_VARIANTS[variant], bits=name_bits)
    return _create_dath(f'{variant}_{name_bits}', pretrained=pretrained, **entry_args(model_args, kwargs))


@register_model
def dath_alexnet_16(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH, 16 bits: two AlexNet streams (position / channel attention)."""
    return _dath('dath_alexnet', 16, pretrained, **kwargs)


@register_model
def dath_alexnet_32(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH, 32 bits: two AlexNet streams (position / channel attention)."""
    return _dath('dath_alexnet', 32, pretrained, **kwargs)


@register_model
def dath_alexnet_48(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH, 48 bits: two AlexNet streams (position / channel attention)."""
    return _dath('dath_alexnet', 48, pretrained, **kwargs)


@register_model
def dath_alexnet_64(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH, 64 bits: two AlexNet streams (position / channel attention)."""
    return _dath('dath_alexnet', 64, pretrained, **kwargs)


@register_model
def dath_s_16(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-S, 16 bits: one AlexNet with position (spatial) attention."""
    return _dath('dath_s', 16, pretrained, **kwargs)


@register_model
def dath_s_32(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-S, 32 bits: one AlexNet with position (spatial) attention."""
    return _dath('dath_s', 32, pretrained, **kwargs)


@register_model
def dath_s_48(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-S, 48 bits: one AlexNet with position (spatial) attention."""
    return _dath('dath_s', 48, pretrained, **kwargs)


@register_model
def dath_s_64(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-S, 64 bits: one AlexNet with position (spatial) attention."""
    return _dath('dath_s', 64, pretrained, **kwargs)


@register_model
def dath_c_16(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-C, 16 bits: one AlexNet with channel attention."""
    return _dath('dath_c', 16, pretrained, **kwargs)


@register_model
def dath_c_32(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-C, 32 bits: one AlexNet with channel attention."""
    return _dath('dath_c', 32, pretrained, **kwargs)


@register_model
def dath_c_48(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-C, 48 bits: one AlexNet with channel attention."""
    return _dath('dath_c', 48, pretrained, **kwargs)


@register_model
def dath_c_64(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-C, 64 bits: one AlexNet with channel attention."""
    return _dath('dath_c', 64, pretrained, **kwargs)


@register_model
def dath_n_16(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-N, 16 bits: one AlexNet, no attention."""
    return _dath('dath_n', 16, pretrained, **kwargs)


@register_model
def dath_n_32(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-N, 32 bits: one AlexNet, no attention."""
    return _dath('dath_n', 32, pretrained, **kwargs)


@register_model
def dath_n_48(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-N, 48 bits: one AlexNet, no attention."""
    return _dath('dath_n', 48, pretrained, **kwargs)


@register_model
def dath_n_64(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-N, 64 bits: one AlexNet, no attention."""
    return _dath('dath_n', 64, pretrained, **kwargs)


@register_model
def dath1_16(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-1, 16 bits: one shared AlexNet trunk with both attention modules."""
    return _dath('dath1', 16, pretrained, **kwargs)


@register_model
def dath1_32(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-1, 32 bits: one shared AlexNet trunk with both attention modules."""
    return _dath('dath1', 32, pretrained, **kwargs)


@register_model
def dath1_48(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-1, 48 bits: one shared AlexNet trunk with both attention modules."""
    return _dath('dath1', 48, pretrained, **kwargs)


@register_model
def dath1_64(pretrained: bool = False, **kwargs: Any) -> DATH:
    """DATH-1, 64 bits: one shared AlexNet trunk with both attention modules."""
    return _dath('dath1', 64, pretrained, **kwargs)
