"""What DATH and ADMTH share: code-length bookkeeping, the optional label classifier and timm's
head / feature API around a hash head. Subclasses build their trunk(s), ``head`` (a ``HashHead``)
and ``feature_info``, and implement ``_trunk_features`` (the conv feature map) and ``_forward_taps``
(the four taps). Input checks live here, beside ``forward``: FX's autowrap of ``check_images`` only
patches the module that defines the traced ``forward``."""
from contextvars import ContextVar
from itertools import chain
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices

from .contract import HashingMixin, check_images, code_lengths, filter_state_dict, resolve_bits
from .published import with_trained_input_size
from .safe_loading import check_pretrained_source, checking_pretrained
from .trunks import MIN_INPUT_SIZE

__all__ = ['HashNet', 'build_hash_net']

# True while build_hash_net loads weights into a model it built on the meta device: only then does the model take
# the tensors (timm's own meaning of loading into a meta model, keeping nothing, stands everywhere else)
_RECEIVING_WEIGHTS: ContextVar[bool] = ContextVar('receiving_weights', default=False)


def holds_meta_tensors(module: nn.Module) -> bool:
    """Whether any parameter or buffer of ``module`` is on the meta device: shapes without values."""
    return any(t.is_meta for t in chain(module.parameters(), module.buffers()))


class HashNet(HashingMixin, nn.Module):
    """Base of the paper models: ``forward = forward_head(forward_features(x))``."""

    def __init__(self, bits: Union[int, Sequence[int]], num_classes: Optional[int], num_labels: int,
                 in_chans: int, drop_rate: float) -> None:
        super().__init__()
        self._init_codes(bits, num_classes, num_labels)
        self.in_chans = in_chans
        self.min_input_size = MIN_INPUT_SIZE
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s, and a model :func:`build_hash_net` built on the meta device to receive weights
        takes copies of the tensors in its own dtypes, where copying into meta tensors would keep nothing."""
        if not assign and _RECEIVING_WEIGHTS.get() and holds_meta_tensors(self):
            own = self.state_dict()
            state_dict = {k: v.to(own[k].dtype, copy=True) if k in own else v for k, v in state_dict.items()}
            assign = True
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        assert not enable, 'gradient checkpointing not supported'

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.hash

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None,
                         bits: Optional[Sequence[int]] = None) -> None:
        """New hash layer(s): ``num_classes`` bits in total, or exactly ``bits``; 0 removes them.

        ``num_classes`` equal to the sum of the model's lengths keeps one layer per length (per
        branch for ADMTH); another width gives one code of that width (see ``resolve_bits``).
        """
        dd = get_device_dtype(self)
        self.bits = resolve_bits(num_classes, self.default_bits, bits)
        self.num_classes = sum(self.bits)
        self.head.reset(self.bits, self.head.global_pool if global_pool is None else global_pool, **dd)
        self._reset_label_classifier(**dd)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Taps at strides 4, 8, 16 and 32 (``feature_info``); the last is ``forward_features``."""
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        check_images(x, self.in_chans, self.min_input_size)
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        taps = self._forward_taps(x)
        intermediates = [taps[i] for i in take_indices]
        if intermediates_only:
            return intermediates
        return taps[-1], intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the head; the taps need the whole trunk, so nothing else goes."""
        take_indices, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, self.in_chans, self.min_input_size)
        return self._trunk_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_hash_net(cls: Callable[..., HashNet], variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """timm's ``build_model_with_cfg`` for a paper model, the ``_create_*`` of its model file.

    With ``pretrained`` on the CPU, the model is first built on the meta device, so that no random weights are drawn
    only for the loaded ones to replace. Intel Xeon, one thread, a process running
    ``timm.create_model(f'local-dir:{folder}', pretrained=True)``: ``dath_alexnet_32`` 0.60-0.62 -> 0.20 s,
    ``admth_cnnf_multi`` 1.12-1.19 -> 0.35-0.37 s (the peak memory stays: timm maps the file, which counts). Where
    the weights do not fill it (a new head: ``num_classes=``; an input convolution timm could not adapt), it is
    built again the ordinary way.
    """
    check_pretrained_source(pretrained, kwargs)
    if kwargs.get('bits') is not None and kwargs.get('num_classes') is None:
        # timm would pass the registry's num_classes (the name's width), which resolve_bits reads as one code of
        # that width: bits=(16, 32) on dath_alexnet_32 gave (32,), and on admth_cnnf_multi one 160-bit code
        kwargs['num_classes'] = sum(code_lengths(kwargs['bits']))
    # the registered name, plain or tagged ('dath_alexnet_32.fmnist': timm passes the tag as a str); hf-hub: /
    # local-dir: pass their config.json's cfg, which records its own input size
    from_registry = kwargs.get('pretrained_cfg') is None or isinstance(kwargs.get('pretrained_cfg'), str)

    def build(pretrained: bool, **kwargs: Any) -> Any:
        return build_model_with_cfg(cls, variant, pretrained,
                                    feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),  # timm edits it
                                    pretrained_filter_fn=filter_state_dict, **kwargs)

    with checking_pretrained(pretrained, variant, kwargs):
        overlay = kwargs.get('pretrained_cfg_overlay') or {}
        return with_trained_input_size(_build_pretrained(build, pretrained, kwargs),
                                       pretrained and from_registry and 'input_size' not in overlay)


def _build_pretrained(build: Callable[..., Any], pretrained: bool, kwargs: Dict[str, Any]) -> Any:
    """``build(pretrained, **kwargs)``, on the meta device first for a pretrained CPU model (see build_hash_net)."""
    model = None
    # for a CPU model only: timm loads the weights into CPU memory, and a GPU draws its random weights in no time
    if pretrained and torch.device(kwargs.get('device') or torch.get_default_device()).type == 'cpu':
        receiving = _RECEIVING_WEIGHTS.set(True)
        try:
            model = build(True, **dict(kwargs, device='meta'))
        finally:
            _RECEIVING_WEIGHTS.reset(receiving)
        if holds_meta_tensors(model):
            model = None
    if model is None:
        model = build(pretrained, **kwargs)
    return model
