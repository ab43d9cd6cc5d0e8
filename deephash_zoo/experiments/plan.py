"""What each experiment trains: its arms (the rows of the papers' tables) and the models behind them.

* ``ablation``: the DATH paper's Table 3: DATH and its variants DATH-S (position attention only),
  DATH-C (channel attention only), DATH-N (no attention), DATH-1 (one shared trunk), one model per
  code length (16/32/48/64), as the paper trains them.
* ``multitask``: the ADMTH paper's Tables 3-5: one ADMTH learning all four lengths at once, the same
  without attention (DMLH), and four single-length models without attention (DMLH single-length): the paper
  compares multi- with single-task learning "with the multi-branch network and consistency loss and attention
  mechanism removed", so that comparison and its timing leave attention out of both arms. Four single-length
  ADMTH models (attention kept) remain an extra row.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

__all__ = ['Arm', 'EXPERIMENTS', 'BITS', 'arms_for', 'default_data']

BITS: Tuple[int, ...] = (16, 32, 48, 64)


@dataclass(frozen=True)
class Arm:
    """A row of an experiment's table: ``models`` maps each code length to the model that produces it
    (one model for a multi-length arm, one per length for single-length arms)."""

    label: str
    models: Dict[int, str]
    description: str

    @property
    def distinct_models(self) -> List[str]:
        return list(dict.fromkeys(self.models.values()))


def _per_length(prefix: str, bits: Tuple[int, ...]) -> Dict[int, str]:
    return {b: f'{prefix}_{b}' for b in bits}


def _ablation(bits: Tuple[int, ...]) -> List[Arm]:
    return [
        Arm('DATH', _per_length('dath_alexnet', bits), 'two AlexNet streams, position + channel attention'),
        Arm('DATH-S', _per_length('dath_s', bits), 'one AlexNet, position (spatial) attention only'),
        Arm('DATH-C', _per_length('dath_c', bits), 'one AlexNet, channel attention only'),
        Arm('DATH-N', _per_length('dath_n', bits), 'one AlexNet, no attention'),
        Arm('DATH-1', _per_length('dath1', bits), 'one shared AlexNet trunk carrying both attentions'),
    ]


def _multitask(bits: Tuple[int, ...]) -> List[Arm]:
    return [
        Arm('ADMTH (multi-length)', {b: 'admth_cnnf_multi' for b in BITS if b in bits},
            'CNN-F + SE attention, one branch per length, all lengths learned at once'),
        Arm('DMLH (multi-length)', {b: 'dmlh_cnnf_multi' for b in BITS if b in bits},
            'ADMTH without the attention module'),
        Arm('DMLH (single-length)', _per_length('dmlh_cnnf', bits),
            "one CNN-F model per code length, no attention (the paper's single-task arm)"),
        Arm('ADMTH (single-length)', _per_length('admth_cnnf', bits),
            'one ADMTH model per code length, SE attention kept (an extra row, not the paper\'s comparison)'),
    ]


EXPERIMENTS = {'ablation': _ablation, 'multitask': _multitask}


def default_data(experiment: str) -> Tuple[str, ...]:
    """The datasets the issue asks for: the ablation on both, the multi-task study on the mosaic."""
    return ('fashion-mnist', 'mosaic') if experiment == 'ablation' else ('mosaic',)


def arms_for(experiment: str, bits: Tuple[int, ...] = BITS, only: Tuple[str, ...] = ()) -> List[Arm]:
    """The arms of ``experiment`` at code lengths ``bits``; ``only`` keeps the arms with those labels."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f'unknown experiment {experiment!r}; expected one of {", ".join(EXPERIMENTS)}')
    unknown = [b for b in bits if b not in BITS]
    if unknown or not bits:
        raise ValueError(f'code lengths must be among {BITS}, got {list(bits)}')
    arms = EXPERIMENTS[experiment](tuple(bits))
    if only:
        labels = {a.label for a in arms}
        missing = [o for o in only if o not in labels]
        if missing:
            raise ValueError(f'{experiment} has no arm {missing}; its arms are {sorted(labels)}')
        arms = [a for a in arms if a.label in only]
    return arms
