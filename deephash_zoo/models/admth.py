"""ADMTH: Attention-oriented Deep Multi-Task Hashing

Paper: `Attention-Oriented Deep Multi-Task Hash Learning` - Wang, Meng, Dong, Yang, Xi, Nie,
Electronics 12(5):1226 (2023), https://doi.org/10.3390/electronics12051226

A CNN-F trunk (Chatfield et al. 2014) is shared by every code length ("hard parameter sharing"
up to conv5); a squeeze-and-excitation block (reduction 16) re-weights the channels of the pooled
conv5 map; from fc6 on, each code length has its own branch (fc6, fc7, tanh hash layer). The
paper learns 16, 32, 48 and 64 bits at once (``admth_cnnf_multi``); ``forward`` returns them
concatenated in that order and ``encode(x, bits=k)`` picks one.

Variants:
* ``dmlh_cnnf_multi``: the same without attention (DMLH, the authors' earlier conference model).
* ``admth_cnnf_{16,32,48,64}``: one branch, for the multi- vs single-task comparison (Table 3).
"""
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from .contract import HUB_ORG, HUB_WEIGHTS, entry_args, init_weights
from .hashnet import HashNet, build_hash_net
from .head import HashHead
from .published import UNPUBLISHED, tags_of
from .safe_loading import register_constructor
from .trunks import ConvTrunk

__all__ = ['ADMTH']


class ADMTH(HashNet):
    """CNN-F trunk, SE channel attention, one fc6/fc7/hash branch per code length."""

    def __init__(
            self,
            bits: Union[int, Sequence[int]] = (16, 32, 48, 64),
            attention: str = 'se',
            num_classes: Optional[int] = None,
            in_chans: int = 3,
            drop_rate: float = 0.5,
            global_pool: str = 'avg',
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            bits: one branch per code length, ascending.
            attention: 'se' (ADMTH) or 'none' (DMLH).
            num_classes: timm's head width; see ``resolve_bits`` (defaults to ``sum(bits)``).
            in_chans: image channels.
            drop_rate: dropout before fc6 and fc7.
            global_pool: pool after fc7 for inputs above 224 ('' = no pool; see ``HashHead``).
        """
        super().__init__(bits, num_classes, 0, in_chans, drop_rate)
        dd = {'device': device, 'dtype': dtype}
        self.trunk = ConvTrunk('cnnf', attention, attn_after_pool=True, in_chans=in_chans, **dd)
        self.num_features = self.trunk.out_chs
        self.head = HashHead(
            self.num_features, len(self.default_bits), 'concat', self.bits,
            drop_rate=drop_rate, global_pool=global_pool, **dd,
        )
        self.head_hidden_size = self.head.hidden_size
        self.feature_info = self.trunk.feature_info('trunk.')
        init_weights(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^trunk\.features\.0', blocks=[(r'^trunk\.features\.(\d+)', None), (r'^trunk\.attn', (99,))])

    def _forward_taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.trunk.forward_taps(x)

    def _trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


register_constructor(('admth', 'dmlh'), ADMTH)


def _create_admth(variant: str, pretrained: bool = False, **kwargs: Any) -> ADMTH:
    return build_hash_net(ADMTH, variant, pretrained, **kwargs)


def _cfg(bits: Sequence[int], **kwargs: Any) -> Dict[str, Any]:
    classifier = tuple(f'head.hash.fc.{i}' for i in range(len(bits)))
    return {
        'url': '', 'num_classes': sum(bits), 'input_size': (3, 224, 224), 'pool_size': (6, 6),
        'crop_pct': 1.0, 'crop_mode': 'squash', 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'trunk.features.0', 'classifier': classifier[0] if len(classifier) == 1 else classifier,
        'license': 'apache-2.0',
        'paper_name': 'Attention-Oriented Deep Multi-Task Hash Learning',
        'paper_ids': 'doi:10.3390/electronics12051226',
        **kwargs,
    }


MULTI_BITS = (16, 32, 48, 64)
_LENGTHS = {'admth_cnnf_multi': MULTI_BITS, 'dmlh_cnnf_multi': MULTI_BITS,
            **{f'{family}_cnnf_{b}': (b,) for family in ('admth', 'dmlh') for b in MULTI_BITS}}
default_cfgs = generate_default_cfgs({
    **{f'{name}.{tag}': _cfg(_LENGTHS[name], hf_hub_id=f'{HUB_ORG}/{name}.{tag}', hf_hub_filename=HUB_WEIGHTS)
       for name in _LENGTHS if name not in UNPUBLISHED for tag in tags_of(name)},
    # the single-length models (the paper's single-task arm, and with SE attention kept): architectures only
    **{name: _cfg(_LENGTHS[name]) for name in UNPUBLISHED},
})


@register_model
def admth_cnnf_multi(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """ADMTH: CNN-F + SE attention, branches for 16/32/48/64 bits learned at once."""
    model_args = dict(bits=MULTI_BITS, attention='se')
    return _create_admth('admth_cnnf_multi', pretrained=pretrained, **entry_args(model_args, kwargs))


@register_model
def dmlh_cnnf_multi(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """DMLH: ADMTH without the attention module."""
    model_args = dict(bits=MULTI_BITS, attention='none')
    return _create_admth('dmlh_cnnf_multi', pretrained=pretrained, **entry_args(model_args, kwargs))


@register_model
def admth_cnnf_16(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """ADMTH with a single 16-bit branch."""
    return _create_admth('admth_cnnf_16', pretrained=pretrained, **entry_args(dict(bits=(16,)), kwargs))


@register_model
def admth_cnnf_32(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """ADMTH with a single 32-bit branch."""
    return _create_admth('admth_cnnf_32', pretrained=pretrained, **entry_args(dict(bits=(32,)), kwargs))


@register_model
def admth_cnnf_48(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """ADMTH with a single 48-bit branch."""
    return _create_admth('admth_cnnf_48', pretrained=pretrained, **entry_args(dict(bits=(48,)), kwargs))


@register_model
def admth_cnnf_64(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """ADMTH with a single 64-bit branch."""
    return _create_admth('admth_cnnf_64', pretrained=pretrained, **entry_args(dict(bits=(64,)), kwargs))


def _dmlh_single(bits: int, pretrained: bool, kwargs: Dict[str, Any]) -> ADMTH:
    model_args = dict(bits=(bits,), attention='none')
    return _create_admth(f'dmlh_cnnf_{bits}', pretrained=pretrained, **entry_args(model_args, kwargs))


@register_model
def dmlh_cnnf_16(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """CNN-F with one 16-bit branch and no attention: the ADMTH paper's single-task baseline."""
    return _dmlh_single(16, pretrained, kwargs)


@register_model
def dmlh_cnnf_32(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """CNN-F with one 32-bit branch and no attention: the ADMTH paper's single-task baseline."""
    return _dmlh_single(32, pretrained, kwargs)


@register_model
def dmlh_cnnf_48(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """CNN-F with one 48-bit branch and no attention: the ADMTH paper's single-task baseline."""
    return _dmlh_single(48, pretrained, kwargs)


@register_model
def dmlh_cnnf_64(pretrained: bool = False, **kwargs: Any) -> ADMTH:
    """CNN-F with one 64-bit branch and no attention: the ADMTH paper's single-task baseline."""
    return _dmlh_single(64, pretrained, kwargs)
