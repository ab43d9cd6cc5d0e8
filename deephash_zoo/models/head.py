"""Hash heads: fc6/fc7 per stream or branch, then one tanh hash layer per code length.

fc6/fc7 are convolutions (as timm's VGG ``ConvMlp``): fc6 is a 6x6 convolution over the 6x6
conv5 map, so torchvision's Linear weights map onto it by a reshape, larger inputs simply give a
larger map that the global pool averages, and smaller inputs are brought up to 6x6 first.

A head combines its paths in one of two ways:
- ``'sum'`` (DATH): the feature map holds one channel block per stream; stream i's block goes
  through fc6/fc7 number i and the fc7 outputs are summed (the paper's fc7 + fc7').
- ``'concat'`` (ADMTH): every branch sees the whole feature map; the fc7 outputs are
  concatenated and hash layer k reads branch k's block (hard parameter sharing up to conv5).
"""
from typing import Any, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d, register_notrace_module
from torch.nn.utils import skip_init

__all__ = ['FcMlp', 'HashLayer', 'HashHead', 'POOL_TYPES', 'tap_block_sums']

POOL_TYPES = ('avg', 'max', 'avgmax', '')


def tap_block_sums(weight: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A square ``(out, in, k, k)`` fc6 weight summed over the blocks of taps that one position of a ``height x
    width`` map meets once the map is nearest-repeated to ``k x k``: ``(out, in, height, width)``."""
    o, c, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    return weight.reshape(o, c, height, k // height, width, k // width).sum(dim=(3, 5))


@register_notrace_module  # reason: FX cannot trace the small-map guard
class FcMlp(nn.Module):
    """AlexNet's fc6 + fc7 as convolutions, each after dropout and followed by ReLU.

    fc6 and fc7 are drawn once, by :meth:`reset_parameters` (``init_weights`` leaves them be). torch's default
    initialisation of their 54 M weights, which ``init_weights`` then drew again, was 60% of the time
    ``timm.create_model('admth_cnnf_multi')`` took (1.2 of 2.0 s on one core, Intel Xeon).
    """

    def __init__(
            self,
            in_chs: int,
            hidden: int = 4096,
            kernel_size: int = 6,
            drop_rate: float = 0.5,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        # allocated, not initialised (reset_parameters draws them); skip_init's own default device is 'cpu'
        dd = {'device': device if device is not None else torch.get_default_device(), 'dtype': dtype}
        self.kernel_size = kernel_size
        self.drop6 = nn.Dropout(drop_rate)
        self.fc6 = skip_init(nn.Conv2d, in_chs, hidden, kernel_size, **dd)
        self.act6 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(drop_rate)
        self.fc7 = skip_init(nn.Conv2d, hidden, hidden, 1, **dd)
        self.act7 = nn.ReLU(inplace=True)
        # set by fix_input_map for a graph export at one input size; not part of the state dict
        self.register_buffer('fc6_matrix', None, persistent=False)
        self.register_buffer('fc7_matrix', None, persistent=False)
        self.fixed_map: Optional[tuple] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He fan_in normal weights and zero biases: the rule ``init_weights`` gives every other convolution."""
        for fc in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(fc.weight, mode='fan_in', nonlinearity='relu')
            nn.init.zeros_(fc.bias)

    @torch.jit.unused
    @torch.no_grad()
    def fix_input_map(self, height: int, width: int) -> bool:
        """Precompute fc6/fc7 as ``(in, out)`` matrices for a graph export whose input size makes fc6's input
        map ``height x width``: the graph then holds two MatMuls on ready initialisers, which ONNX Runtime runs
        as GEMMs and its int8 quantisers cover (dynamic int8 turned the convolutions into ``ConvInteger``,
        slower than fp32). Returns False, leaving the convolutions, where no matrix form exists (a map larger
        than the window, or sides that do not divide it)."""
        weight = self._matmul_weight(torch.empty(1, 1, height, width, device='meta'), exporting_ok=True)
        if weight is None:
            return False
        self.fc6_matrix = weight.t().contiguous()
        self.fc7_matrix = self.fc7.weight.flatten(1).t().contiguous()
        self.fixed_map = (height, width)
        return True

    @torch.jit.unused
    def _matmul_weight(self, x: torch.Tensor, exporting_ok: bool = False) -> Optional[torch.Tensor]:
        """fc6's weight as a matrix over ``x`` flattened, when fc6 can run as a matrix product; else None.

        Same numbers as the convolutions, but eager CPU convolution re-lays fc6's 151 MB weight on every
        call (batch-1 encoding was ~4x slower). A map of exactly fc6's window uses the weight as it is. A
        smaller map whose sides divide the window (1x1, 2x2, 3x3: inputs 63-94, 95-126, 127-158 pixels)
        is what the nearest repeat blows up to the window, so each map position meets a block of fc6's
        taps: summing those taps first is the same function and gradient at 1/36 (1x1) of the cost.
        Graph exports keep the convolutions: there the weights stay initialisers that ONNX Runtime and
        its int8 quantiser use directly (a reshaped 37 M-element weight is not constant-folded)."""
        if not exporting_ok and (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
            return None
        k, (h, w) = self.kernel_size, x.shape[-2:]
        taps = getattr(self, 'fc6_taps', None)  # the block sums a training run folded fc6 into (TapFold)
        if taps is not None:
            if tuple(taps.shape[-2:]) != (h, w):
                raise ValueError(f'fc6 is folded for a {taps.shape[-2]}x{taps.shape[-1]} map while training; '
                                 f'got a {h}x{w} map (an input of another size)')
            return taps.flatten(1)
        weight = self.fc6.weight
        if h == k and w == k:
            return weight.flatten(1)
        if h > k or w > k or k % h or k % w:
            return None
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or weight.is_inference()):
            # (an inference tensor keeps no version counter, so a change in place could not be seen)
            return tap_block_sums(weight, h, w).flatten(1)
        # encoding: the sums are the same until the weight changes, and reading 151 MB to make them was most
        # of a 64x64 batch-1 call (an in-place update or load_state_dict bumps _version; .to() and the like drop
        # the cache, see _apply; an edit through .data bumps nothing, as for torch's own version-keyed caches: edit
        # the parameter under torch.no_grad() instead). A trace records no cache: its sanity check re-runs the call
        # without grad.
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, h, w)
        cached = getattr(self, '_fc6_sums', None)
        if cached is None or cached[0] != key:
            cached = self._fc6_sums = (key, tap_block_sums(weight, h, w).flatten(1))
        return cached[1]

    def _apply(self, fn: Any, recurse: bool = True) -> 'FcMlp':
        """``.to()``, ``.half()``, ``.float()``, ``.cuda()``: new weights, which can take the old one's address with
        a fresh version counter, so the cached tap sums go (``m.half(); m.float()`` served the fp16-rounded sums)."""
        self._fc6_sums = None
        return super()._apply(fn, recurse)

    @torch.jit.unused
    def _fixed_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """fc6/fc7 on the matrices :meth:`fix_input_map` set, for the map size they were fixed for; else None."""
        if self.fc6_matrix is None or self.fc7_matrix is None or tuple(x.shape[-2:]) != self.fixed_map:
            return None
        x = self.act6(torch.matmul(self.drop6(x).flatten(1), self.fc6_matrix) + self.fc6.bias)
        x = self.act7(torch.matmul(self.drop7(x), self.fc7_matrix) + self.fc7.bias)
        return x[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            fixed = self._fixed_forward(x)
            if fixed is not None:
                return fixed
            weight = self._matmul_weight(x)
            if weight is not None:
                x = self.act6(F.linear(self.drop6(x).flatten(1), weight, self.fc6.bias))
                x = self.act7(F.linear(self.drop7(x), self.fc7.weight.flatten(1), self.fc7.bias))
                return x[:, :, None, None]
        if x.shape[-2] < self.kernel_size or x.shape[-1] < self.kernel_size:
            # small inputs: repeat the map up to the fc6 window (nearest exports to ONNX Resize)
            size = (max(self.kernel_size, x.shape[-2]), max(self.kernel_size, x.shape[-1]))
            x = F.interpolate(x, size=size, mode='nearest')
        x = self.act6(self.fc6(self.drop6(x)))
        return self.act7(self.fc7(self.drop7(x)))


class HashLayer(nn.Module):
    """One ``Linear -> tanh`` per code length, outputs concatenated in ascending length order.

    With ``split_input`` the input holds one equal block per length (ADMTH's branches) and layer
    k reads block k; otherwise every layer reads the whole input. No lengths: the identity, which
    is timm's ``num_classes=0`` (the head returns its pre-logits features).
    """

    def __init__(self, in_features: int, bits: Sequence[int], split_input: bool = False, device=None, dtype=None):
        super().__init__()
        self.bits = tuple(bits)
        self.split_input = split_input and len(self.bits) > 0
        block = in_features // len(self.bits) if self.split_input else in_features
        self.block = block
        self.fc = nn.ModuleList([nn.Linear(block, b, device=device, dtype=dtype) for b in self.bits])

    def _block(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x[:, i * self.block:(i + 1) * self.block] if self.split_input else x

    @torch.jit.unused
    @torch.no_grad()
    def center_on(self, x: torch.Tensor) -> None:
        """Set each layer's bias so that its pre-activation averages 0 over ``x`` (pre-logits features of a
        batch of images). Features after ReLU share a large positive part, which a fresh layer maps to a
        pre-activation common to every image (about 6x the image-to-image spread): most codes then agree on
        most bits. Centred, each bit splits the batch, and codes start as different as the features allow."""
        for i, fc in enumerate(self.fc):
            fc.bias -= fc(self._block(x, i)).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.bits) == 0:
            return x
        codes: List[torch.Tensor] = []
        for i, fc in enumerate(self.fc):
            xi = x[:, i * self.block:(i + 1) * self.block] if self.split_input else x
            codes.append(torch.tanh(fc(xi)))
        return torch.cat(codes, dim=1)


class HashHead(nn.Module):
    """fc6/fc7 for each path, global pool, combination, hash layer.

    ``global_pool=''`` means no global pool. Without a hash layer (``num_classes=0``) the head then
    returns the unpooled features, as timm models do for ``reset_classifier(0, '')``; with one, the
    fc7 map is flattened, which is AlexNet itself at 224x224 (fc7 is 1x1 there).
    """

    def __init__(
            self,
            in_chs: int,
            num_paths: int,
            combine: str,
            bits: Sequence[int],
            hidden: int = 4096,
            drop_rate: float = 0.5,
            global_pool: str = 'avg',
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if combine not in ('sum', 'concat'):
            raise ValueError(f"combine must be 'sum' or 'concat', got {combine!r}")
        self.combine = combine
        self.num_paths = num_paths
        self.path_chs = in_chs // num_paths if combine == 'sum' else in_chs
        self.hidden = hidden
        self.hidden_size = hidden if combine == 'sum' else hidden * num_paths
        self.mlps = nn.ModuleList([FcMlp(self.path_chs, hidden, drop_rate=drop_rate, **dd) for _ in range(num_paths)])
        self.global_pool = ''
        self.pool = SelectAdaptivePool2d(pool_type='avg', flatten=True)
        self.hash = HashLayer(self.hidden_size, (), **dd)
        self.reset(bits, global_pool, **dd)

    def reset(self, bits: Sequence[int], global_pool: str, device=None, dtype=None) -> None:
        """Replace the hash layer (and the pool): what timm's ``reset_classifier`` does."""
        if global_pool not in POOL_TYPES:
            raise ValueError(f'global_pool must be one of {POOL_TYPES}, got {global_pool!r}')
        self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.global_pool = global_pool
        split = self.combine == 'concat' and len(bits) == self.num_paths
        self.hash = HashLayer(self.hidden_size, bits, split_input=split, device=device, dtype=dtype)
        self.pool.train(self.training)  # new modules follow the model's train/eval mode
        self.hash.train(self.training)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '' and len(self.hash.bits) == 0:
            return x
        feats: List[torch.Tensor] = []
        for i, mlp in enumerate(self.mlps):
            xi = x[:, i * self.path_chs:(i + 1) * self.path_chs] if self.combine == 'sum' else x
            feats.append(self.pool(mlp(xi)))
        if self.combine == 'sum':
            h = feats[0]
            for f in feats[1:]:
                h = h + f
        else:
            h = torch.cat(feats, dim=1)
        if pre_logits:
            return h
        return self.hash(h)
