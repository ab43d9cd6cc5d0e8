"""Attention modules shared by the model families.

DATH (Jiang et al. 2021) takes its two attention modules from DANet (Fu et al., CVPR 2019):
position attention relates every spatial location to every other, channel attention relates
every channel map to every other. Both add their result to the input through a learned scale
initialised to 0, so an attention stream starts out as the plain backbone (which is what makes
ImageNet initialisation meaningful) and learns how much attention to mix in.

ADMTH (Wang et al. 2023) uses squeeze-and-excitation (Hu et al. 2018, reduction 16), which timm
already provides as ``SEModule``.
"""
from contextlib import nullcontext
from typing import ContextManager, Optional

import torch
import torch.nn as nn
from timm.layers import SEModule

__all__ = ['PositionAttention', 'ChannelAttention', 'DualAttention', 'create_attention', 'open_attention_gates',
           'ATTENTION_KINDS']

ATTENTION_KINDS = ('none', 'position', 'channel', 'dual', 'se')


def _energy_in_fp32(x: torch.Tensor) -> ContextManager:
    """Autocast off for an attention energy, so fp16 autocast cannot overflow it.

    A channel energy ``A A^T`` sums ``H*W`` products: a 13x13 map of activations up to 40 already
    reaches 9.5e4, past fp16's 65,504, and ``max - E`` of two infs is NaN even with the module's scale
    at 0. The energies are computed in fp32 and the attention weights cast back. Outside autocast
    (training in fp32, ONNX export), on devices without autocast (``meta``) and under FX tracing
    this is a no-op context, so exported and traced graphs are unchanged.
    """
    if not isinstance(x, torch.Tensor):  # an FX proxy while tracing: no autocast state to read
        return nullcontext()
    device_type = x.device.type
    # 'meta' and other devices without autocast raise in is_autocast_enabled: nothing to turn off
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


class PositionAttention(nn.Module):
    """DANet position attention module (PAM): ``out = gamma * (V . softmax(Q^T K)^T) + x``.

    Query and key are 1x1 convolutions to ``channels // reduction`` (DANet uses C/8), value keeps
    all channels. ``gamma`` starts at 0.
    """

    def __init__(self, channels: int, reduction: int = 8, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        qk_chs = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, qk_chs, kernel_size=1, **dd)
        self.key = nn.Conv2d(channels, qk_chs, kernel_size=1, **dd)
        self.value = nn.Conv2d(channels, channels, kernel_size=1, **dd)
        self.gamma = nn.Parameter(torch.zeros(1, **dd))

    def _weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.bmm(q.float(), k.float()), dim=-1)

    @torch.jit.unused
    def _weights_outside_autocast(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        with _energy_in_fp32(q):
            return self._weights(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B, N, C'
        k = self.key(x).flatten(2)  # B, C', N
        v = self.value(x).flatten(2)  # B, C, N
        # B, N, N: row i = weights of every position for i; fp32 so fp16 inputs cannot overflow
        attn = (self._weights(q, k) if torch.jit.is_scripting() else self._weights_outside_autocast(q, k)).to(v.dtype)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return self.gamma * out + x

    @torch.no_grad()
    def open_gate(self, scale: float) -> None:
        """Start with ``gamma = scale`` and the value projection at the identity, so the module begins by
        adding ``scale`` x an attention-weighted mix of the input's own positions (see ``open_attention_gates``)."""
        self.gamma.fill_(scale)
        c = self.value.out_channels
        w = self.value.weight
        w.copy_(torch.eye(c, dtype=w.dtype, device=w.device).reshape(c, c, 1, 1))
        if self.value.bias is not None:
            self.value.bias.zero_()


class ChannelAttention(nn.Module):
    """DANet channel attention module (CAM): ``out = gamma * (softmax(max(E) - E) . A) + x``, E = A A^T.

    DANet subtracts the energy from its row maximum before the softmax (it sharpens the contrast
    between channels and keeps the exponent bounded); we follow it. ``gamma`` starts at 0. The
    energy is computed in fp32 whatever the input dtype (fp16 overflows it, see ``_energy_in_fp32``).
    """

    def __init__(self, channels: int, device=None, dtype=None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def _weights(self, a: torch.Tensor) -> torch.Tensor:
        a32 = a.float()  # fp16 would overflow: the energy sums H*W products
        energy = torch.bmm(a32, a32.transpose(1, 2))  # B, C, C
        energy = energy.amax(dim=-1, keepdim=True) - energy
        return torch.softmax(energy, dim=-1)

    @torch.jit.unused
    def _weights_outside_autocast(self, a: torch.Tensor) -> torch.Tensor:
        with _energy_in_fp32(a):
            return self._weights(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        a = x.flatten(2)  # B, C, N
        attn = (self._weights(a) if torch.jit.is_scripting() else self._weights_outside_autocast(a)).to(a.dtype)
        out = torch.bmm(attn, a).reshape(b, c, h, w)
        return self.gamma * out + x

    @torch.no_grad()
    def open_gate(self, scale: float) -> None:
        """Start with ``gamma = scale`` (the module has no other weights)."""
        self.gamma.fill_(scale)


class DualAttention(nn.Module):
    """Position and channel attention on one feature map, fused by their mean (DATH-1's shared extractor).

    DANet fuses its two modules by a sum; we take the mean so that, with both scales at 0, the
    module is the identity and DATH-1 starts as the plain (ImageNet-initialised) AlexNet.
    """

    def __init__(self, channels: int, reduction: int = 8, device=None, dtype=None) -> None:
        super().__init__()
        self.position = PositionAttention(channels, reduction, device=device, dtype=dtype)
        self.channel = ChannelAttention(channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.position(x) + self.channel(x))


def open_attention_gates(model: nn.Module, scale: float) -> int:
    """Start every DANet module of ``model`` with its residual scale at ``scale`` instead of 0; the count.

    Why: from a trunk pretrained without attention, ``gamma = 0`` is a fixed point of a short hashing stage.
    The query / key / value projections get gradient only through ``gamma``, so they stay random; with random
    projections the attention term is noise to the pretrained fc6, so the objective's gradient on ``gamma``
    points back to 0 (measured: 300 steps leave ``gamma`` within 0.002 of 0, at the recipe's learning rate and
    at 1000x it), and an attention arm computes its backbone's function. Opened, each module starts by mixing
    the input's own positions (position attention, its value projection at the identity) or channels (channel
    attention) into it, and its projections learn from the first step. DANet's formula is unchanged; only the
    start differs. SE modules have no gate and are left as they are.
    """
    opened = 0
    for module in model.modules():
        if isinstance(module, (PositionAttention, ChannelAttention)):
            module.open_gate(scale)
            opened += 1
    return opened


def create_attention(kind: str, channels: int, device=None, dtype=None) -> nn.Module:
    """Build the attention module named ``kind`` (one of ``ATTENTION_KINDS``) for ``channels`` maps."""
    dd = {'device': device, 'dtype': dtype}
    module: Optional[nn.Module] = None
    if kind == 'none':
        module = nn.Identity()
    elif kind == 'position':
        module = PositionAttention(channels, **dd)
    elif kind == 'channel':
        module = ChannelAttention(channels, **dd)
    elif kind == 'dual':
        module = DualAttention(channels, **dd)
    elif kind == 'se':
        module = SEModule(channels, rd_ratio=1. / 16, **dd)
    if module is None:
        raise ValueError(f'unknown attention {kind!r}; expected one of {ATTENTION_KINDS}')
    return module
