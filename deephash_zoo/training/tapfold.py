"""fc6 trained as its tap sums where the training input makes fc6's map a nearest repeat.

Below 159 pixels the conv5 map of AlexNet and CNN-F is 1x1, 2x2 or 3x3, which :class:`FcMlp` repeats up
to fc6's 6x6 window: each block of taps meets one map position, so every tap of a block gets the same
gradient and only the block's sum reaches the output (FcMlp's forward already multiplies by the summed
weight). SGD still updated all 37.7 M weights of each fc6 a step, and the backward spread every gradient
over them; at 64x64, batch 128, on 2 cores that was a quarter of an AlexNet pretraining step.

:class:`TapFold` trains the block sums S instead, as their own parameter, at n times the learning rate and
1/n of the weight decay (n taps a block). Under SGD (with momentum, Nesterov or not) that moves S exactly as
training every tap moves their sum, in real arithmetic. What is left of the weights, their deviation from
the block mean, gets no gradient: weight decay alone scales it, by one number a step, which TapFold keeps
(with its momentum) in a two-element buffer. :meth:`TapFold.spread` writes the weights as training every
tap would hold them, for checkpoints and trunk files; the run's own resumable state keeps the folded form.
"""
from contextlib import ExitStack, contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from deephash_zoo.models.head import FcMlp, tap_block_sums

__all__ = ['TapFold', 'fold_size']


def fold_size(mlp: FcMlp, height: int, width: int) -> Optional[Tuple[int, int]]:
    """Taps per block ``(kernel // height, kernel // width)`` where fc6's input map of ``height x width``
    is a nearest repeat to its window (sides smaller than and dividing it); else None."""
    k = mlp.kernel_size
    if height >= k and width >= k or k % height or k % width:
        return None
    return k // height, k // width


def _repeat_blocks(sums: torch.Tensor, kernel: int) -> torch.Tensor:
    """Each block value repeated over its taps: the layout :func:`tap_block_sums` sums over."""
    o, c, h, w = sums.shape
    return sums[:, :, :, None, :, None].expand(o, c, h, kernel // h, w, kernel // w).reshape(o, c, kernel, kernel)


def _taps_per_block(kernel: int, sums: torch.Tensor) -> int:
    """n, the taps each folded sum stands for: ``(kernel // height) * (kernel // width)`` of its map."""
    h, w = sums.shape[-2:]
    return (kernel // h) * (kernel // w)


class TapFold:
    """The folded fc6 of every :class:`FcMlp` of a model that meets a repeated map at the training size."""

    def __init__(self, mlps: Sequence[FcMlp]) -> None:
        self.mlps = list(mlps)

    @classmethod
    def attach(cls, model: nn.Module, img_size: int, in_chans: int = 3) -> Optional['TapFold']:
        """Fold every fc6 whose input map at ``img_size`` is a nearest repeat (one probe forward finds the
        maps); None where none is."""
        maps: Dict[FcMlp, Tuple[int, int]] = {}

        def note_map(mod: nn.Module, args: Tuple[torch.Tensor, ...]) -> None:
            maps.setdefault(mod, tuple(args[0].shape[-2:]))

        hooks = [m.register_forward_pre_hook(note_map) for m in model.modules() if isinstance(m, FcMlp)]
        was_training = model.training
        try:
            model.eval()
            with torch.no_grad():
                first = next(model.parameters())
                model(torch.zeros(1, in_chans, img_size, img_size, device=first.device, dtype=first.dtype))
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        mlps = [m for m, (h, w) in maps.items() if fold_size(m, h, w)]
        for m in mlps:
            cls._fold(m, *maps[m])
        return cls(mlps) if mlps else None

    @staticmethod
    def _fold(mlp: FcMlp, height: int, width: int) -> None:
        weight = mlp.fc6.weight
        weight.requires_grad_(False)  # kept as it was at the fold: the deviations' reference
        mlp.fc6_taps = nn.Parameter(tap_block_sums(weight.detach(), height, width))
        # [scale of the deviations since the fold, its momentum buffer]
        mlp.register_buffer('fc6_spread', torch.tensor([1.0, 0.0], dtype=torch.float64, device=weight.device))

    @staticmethod
    def _taps(mlp: FcMlp) -> int:
        return _taps_per_block(mlp.kernel_size, mlp.fc6_taps)

    def param_groups(self, params: Sequence[nn.Parameter], lr: float, weight_decay: float) -> List[Dict[str, Any]]:
        """``params`` (the folded sums among them) as optimiser groups: the sums at n x ``lr`` and
        ``weight_decay`` / n, everything else as given. Weights the fold froze are left out."""
        folded = {id(m.fc6_taps): m for m in self.mlps}
        rest = [p for p in params if id(p) not in folded and p.requires_grad]
        groups: List[Dict[str, Any]] = [dict(params=rest)]
        for p in params:
            if id(p) in folded:
                n = self._taps(folded[id(p)])
                groups.append(dict(params=[p], lr=lr * n, weight_decay=weight_decay / n))
        return groups

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Advance each deviation scale by the SGD step its weight decay alone takes (call after each step)."""
        groups = {id(p): g for g in optimizer.param_groups for p in g['params']}
        for m in self.mlps:
            g, n = groups[id(m.fc6_taps)], self._taps(m)
            lr, wd = g['lr'] / n, g['weight_decay'] * n  # the settings every tap of fc6 trains with
            momentum, nesterov = g.get('momentum', 0.0), g.get('nesterov', False)
            scale, buf = (float(v) for v in m.fc6_spread)
            d = wd * scale
            if momentum:
                buf = momentum * buf + d
                d = d + momentum * buf if nesterov else buf
            m.fc6_spread.copy_(torch.tensor([scale - lr * d, buf], dtype=torch.float64))

    @contextmanager
    def spread(self) -> Iterator[None]:
        """Inside: each fc6 holds its full weight and the fold's tensors are out of ``state_dict`` (the
        registered layout, as checkpoints and trunk files store it); afterwards the fold is as it was."""
        with ExitStack() as stack:
            for m in self.mlps:
                stack.enter_context(self._spread_one(m))
            yield

    @contextmanager
    def _spread_one(self, mlp: FcMlp) -> Iterator[None]:
        reference = mlp.fc6.weight.data
        taps, spread = mlp._parameters.pop('fc6_taps'), mlp._buffers.pop('fc6_spread')
        try:
            mlp.fc6.weight.data = self._full(reference, taps, spread, mlp.kernel_size)
            yield
        finally:
            mlp.fc6.weight.data = reference
            mlp._parameters['fc6_taps'], mlp._buffers['fc6_spread'] = taps, spread

    @staticmethod
    def _full(reference: torch.Tensor, taps: torch.Tensor, spread: torch.Tensor, kernel: int) -> torch.Tensor:
        """fc6's weight as training every tap would hold it: the sums' mean on each tap, plus the deviations
        from the block mean at the fold times their scale since."""
        h, w = taps.shape[-2:]
        n = _taps_per_block(kernel, taps)
        deviation = reference - _repeat_blocks(tap_block_sums(reference, h, w) / n, kernel)
        return (deviation * float(spread[0]) + _repeat_blocks(taps.detach() / n, kernel)).to(reference.dtype)
