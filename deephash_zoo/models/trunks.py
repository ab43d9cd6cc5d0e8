"""Convolutional trunks: AlexNet (DATH) and CNN-F (ADMTH), with an attention slot.

Layer order and indices follow the reference weights, so converters map them one to one:
AlexNet as torchvision's ``alexnet().features`` (conv layers at 0, 3, 6, 8, 10; its last max pool
is our ``pool``), CNN-F as MatConvNet's ``imagenet-vgg-f`` (Chatfield et al., BMVC 2014: conv1
64x11x11 stride 4, LRN, pool, conv2 256x5x5, LRN, pool, conv3-5 256x3x3, pool).

Both shrink a 224x224 image to a 6x6 map (nominal stride 32) and need at least
``MIN_INPUT_SIZE`` = 63 pixels a side: below that a max pool would see a map smaller than its
window.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from .attention import create_attention
from .lrn import LocalResponseNorm

__all__ = ['ConvTrunk', 'MIN_INPUT_SIZE', 'TRUNK_CHANNELS']

MIN_INPUT_SIZE = 63
TRUNK_CHANNELS = 256
_TAP_REDUCTIONS = (4, 8, 16, 32)


def _alexnet_layers(in_chans: int, dd: Dict) -> Tuple[List[nn.Module], Tuple[int, int]]:
    layers = [
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2, **dd), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2, **dd), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
    ]
    return layers, (1, 4)  # taps: relu1, relu2


def _cnnf_layers(in_chans: int, dd: Dict) -> Tuple[List[nn.Module], Tuple[int, int]]:
    # MatConvNet's norm [5 1 2e-5 0.75] is kappa + alpha * sum; torch's LRN divides alpha by size.
    def lrn() -> nn.Module:
        return LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)

    layers = [
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=0, **dd), nn.ReLU(inplace=True), lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),  # MatConvNet pads pool1 by [0 1 0 1]
        nn.Conv2d(64, 256, kernel_size=5, padding=2, **dd), nn.ReLU(inplace=True), lrn(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 256, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1, **dd), nn.ReLU(inplace=True),
    ]
    return layers, (2, 6)  # taps: lrn1, lrn2


_ARCHS = {'alexnet': _alexnet_layers, 'cnnf': _cnnf_layers}


class ConvTrunk(nn.Module):
    """conv1..conv5 (``features``), an attention module, and the last max pool (``pool``).

    ``attn_after_pool`` places the attention after the last pool (ADMTH's SE sits "immediately
    after the convolution-pooling network") instead of on the conv5 map before it (DATH, DANet).
    The trunk exposes four taps, at strides 4, 8, 16 and 32, for ``forward_intermediates``.
    """

    def __init__(
            self,
            arch: str = 'alexnet',
            attention: str = 'none',
            attn_after_pool: bool = False,
            in_chans: int = 3,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if arch not in _ARCHS:
            raise ValueError(f'unknown trunk {arch!r}; expected one of {tuple(_ARCHS)}')
        layers, taps = _ARCHS[arch](in_chans, dd)
        self.arch = arch
        self.attention_kind = attention
        self.features = nn.Sequential(*layers)
        self.attn = create_attention(attention, TRUNK_CHANNELS, **dd)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)
        self.attn_after_pool = attn_after_pool
        self.tap_ends: List[int] = [taps[0], taps[1], len(layers) - 1]
        self.out_chs = TRUNK_CHANNELS

    def feature_info(self, prefix: str = '') -> List[Dict]:
        """timm ``feature_info`` entries of the four taps, module names relative to ``prefix``."""
        convs = [(i, m.out_channels) for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        chs = [[c for i, c in convs if i <= end][-1] for end in self.tap_ends[:2]] + [self.out_chs] * 2
        if self.attn_after_pool:
            names = [f'features.{self.tap_ends[0]}', f'features.{self.tap_ends[1]}', f'features.{self.tap_ends[2]}',
                     'attn']
        else:
            names = [f'features.{self.tap_ends[0]}', f'features.{self.tap_ends[1]}', 'attn', 'pool']
        taps = zip(chs, _TAP_REDUCTIONS, names, strict=True)
        return [dict(num_chs=c, reduction=r, module=prefix + n) for c, r, n in taps]

    def forward_taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        """All four taps; the last one is what ``forward`` returns."""
        taps: List[torch.Tensor] = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.tap_ends[0] or i == self.tap_ends[1]:
                taps.append(x)
        if not self.attn_after_pool:
            x = self.attn(x)
        taps.append(x)
        x = self.pool(x)
        if self.attn_after_pool:
            x = self.attn(x)
        taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.attn_after_pool:
            return self.attn(self.pool(x))
        return self.pool(self.attn(x))
