"""Named training recipes: what a run does when the command line leaves a setting unset.

Both papers fine-tune from ImageNet weights, which cannot be had here. A recipe names the whole
setting a checkpoint was trained with, and every checkpoint's ``config.json`` records it:

* ``paper``: the papers' own settings and loss forms, for an ImageNet initialisation (``--init``), at the
  papers' 224x224.
  DATH: RMSProp lr 1e-5, weight decay 1e-5, batch 128, J1 + J2 + 0.01 J3 with margin 5, each term
  summed as in Eqs. 3, 5, 8. ADMTH: SGD, batch 128, 20 x pairwise + 1 x consistency summed as in
  Eqs. 7-9, lr divided by 100 every 30 epochs (the paper says "every 30 iterations" of a schedule it counts in
  epochs; read as epochs here). ADMTH prints an initial lr of 0.15; on the summed
  loss (B (B - 1) = 16,256 pairs a batch) any such lr overflows in the first steps, so the recipe
  takes 1e-7 with momentum 0.9, which is 1.6e-3 per averaged pair.
* ``scratch``: what trains here from random weights, measured on Fashion-MNIST. A classification
  pretraining stage of the trunk (:data:`PRETRAIN`, ``deephash-pretrain``) takes the place of
  ImageNet; the hashing stage starts from it (``--init TRUNK``) with the papers' losses and weights.
  DATH averages each term (``reduction='mean'``: the losses keep their scale at any batch size).
  ADMTH takes the paper's sums divided by the B (B - 1) pairs (``'scaled-sum'``). Averaged like DATH's
  terms instead (``'mean'``), its consistency term would count B - 1 times more against the pairwise
  likelihood than in the paper, and from the pretrained trunk it shrinks every code to 0 before the pairwise
  term can spread them
  (mAP@all 0.13 on Fashion-MNIST against 0.10 for random codes; 0.78-0.81 with ``'scaled-sum'`` on the
  same 156 steps of 10,000 images). Both use SGD with Nesterov
  momentum, a linear warm-up and a cosine decay of the lr, and gamma (DATH's quantisation weight)
  ramped from 0 over the first steps, so that J3's constant pull (-gamma/B sign u) cannot collapse
  the codes before J1 has spread them; 64x64 input (what 2 CPU cores train in minutes, and what the zoo's
  weights are registered at); the hash layers' biases start centred on the features of one
  training batch (``center_hash``), so every bit starts by splitting the images instead of giving
  most of them the same sign. ADMTH's hashing stage trains without dropout (``drop_rate=0``; CNN-F's 0.5
  stays in its pretraining stage); chosen by measurement (one seed, Intel Xeon, 156 steps from the zoo's
  CNN-F trunk on 10,000 images: mAP@all 0.83-0.85 at 16-64 bits against 0.74-0.82 with dropout 0.5; on
  the zoo's 936 steps 0.838-0.845 against 0.822-0.837; ``benchmarks/hashing-ab.intel-xeon.json``). No
  change to the papers' architectures or objectives: ADMTH's label term (``label_weight``,
  :class:`~deephash_zoo.losses.admth.BranchLabelLoss`, not in the paper) is off here; ``--label-weight``
  turns it on. So are balanced pairs (``--loss-arg pair_balance=1``, not in the paper either), which the zoo's
  plan adds to its ADMTH and DMLH hashing stages (:mod:`deephash_zoo.experiments.zoo`).

A recipe never overrides what the command line sets.
"""
from dataclasses import dataclass, fields
from typing import Any, Dict, Optional

__all__ = ['Recipe', 'RECIPES', 'PRETRAIN', 'get_recipe', 'family_of', 'trunk_of']


@dataclass(frozen=True)
class Recipe:
    """One family's settings under one recipe (every field a ``TrainConfig`` setting of that name)."""

    optimizer: str
    lr: float
    weight_decay: float
    batch_size: int
    lr_schedule: str  # 'step' (x lr_decay every lr_step_epochs), 'cosine' (to 0 at the last step), 'constant'
    lr_step_epochs: int = 0
    lr_decay: float = 1.0
    warmup_steps: int = 0
    loss_reduction: str = 'mean'
    gamma_ramp_steps: int = 0  # DATH: gamma grows linearly from 0 over these steps
    drop_rate: Optional[float] = None  # None: the model's own (AlexNet's 0.5)
    flip: bool = False  # random horizontal flips of training images
    nesterov: bool = False
    center_hash: bool = False  # data-dependent start: hash-layer biases centred on a batch's features
    grad_clip: float = 0.0  # clip the gradient's global L2 norm to this (0: never)
    img_size: Optional[int] = None  # training input size (None: the model's registered pretrained_cfg)
    label_weight: float = 0.0  # ADMTH: weight of a label classifier on each branch's codes (not the paper's; 0: off)
    attn_gate_init: float = 0.0  # DATH: DANet's residual scale (gamma) at the hashing stage's start (0: DANet's)

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


RECIPES: Dict[str, Dict[str, Recipe]] = {
    'paper': {
        'dath': Recipe('rmsprop', 1e-5, 1e-5, 128, 'constant', loss_reduction='sum', img_size=224),
        'admth': Recipe('sgd', 1e-7, 0.0, 128, 'step', lr_step_epochs=30, lr_decay=0.01, loss_reduction='sum',
                        img_size=224),
    },
    'scratch': {
        'dath': Recipe('sgd', 1e-3, 5e-4, 128, 'cosine', warmup_steps=100, gamma_ramp_steps=200, flip=True,
                       nesterov=True, center_hash=True, img_size=64),
        'admth': Recipe('sgd', 1e-3, 5e-4, 128, 'cosine', warmup_steps=100, loss_reduction='scaled-sum', flip=True,
                        nesterov=True, center_hash=True, img_size=64, drop_rate=0.0),
    },
}

# The pretraining stage (``deephash-pretrain``): a trunk + fc6/fc7 + linear classifier trained with
# cross-entropy on the training set's labels, as the ImageNet weights it replaces were.
PRETRAIN = Recipe('sgd', 0.02, 5e-4, 128, 'cosine', warmup_steps=100, flip=True, nesterov=True, img_size=64)


def family_of(model_name: str) -> str:
    """'dath' or 'admth' (ADMTH, DMLH and their single-length variants) for a registered model name."""
    if model_name.startswith('dath'):
        return 'dath'
    if model_name.startswith(('admth', 'dmlh')):
        return 'admth'
    raise ValueError(f'no training recipe for {model_name!r}; expected a dath*, admth* or dmlh* model')


def trunk_of(model_name: str) -> str:
    """The trunk a model is initialised from by the pretraining stage: 'alexnet' (DATH) or 'cnnf' (ADMTH, DMLH)."""
    return {'dath': 'alexnet', 'admth': 'cnnf'}[family_of(model_name)]


def get_recipe(name: str, model_name: str) -> Recipe:
    """The settings of recipe ``name`` for ``model_name``'s family, or a ValueError naming the recipes."""
    if name not in RECIPES:
        raise ValueError(f'unknown recipe {name!r}; expected one of {", ".join(RECIPES)}')
    return RECIPES[name][family_of(model_name)]
