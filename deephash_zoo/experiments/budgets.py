"""How much compute an experiment spends: named budgets, so a table always says what produced it.

``cpu-small`` is sized to finish each experiment on 2 CPU cores in under 30 minutes. It trains from
scratch (no ImageNet weights can be downloaded here) on a seeded 1,024-image training subset at
64x64 (AlexNet/CNN-F need at least 63 pixels), evaluates 300 queries against 1,500 database items,
and repeats with three seeds. From scratch, DATH's quantisation term (gamma=0.01) pulls every code
onto one vector within a few dozen steps, so this budget trains DATH with gamma=0 (measured in the
README). ``cpu-small`` and ``paper`` train with the ``paper`` recipe (``deephash_zoo.training.recipes``),
``cpu-pretrained`` with ``scratch``; each checkpoint's config.json records its recipe's settings. The
committed cpu-small tables were made before the recipes existed, with the mean loss form, ADMTH at SGD lr 1e-3
and the earlier initialisation; a 10x higher DATH rate collapsed every code within one epoch (mAP@all 0.104 =
chance on Fashion-MNIST).

``paper`` is the papers' own setting for a GPU: 224x224, whole training set, batch 128, DATH 200
epochs, ADMTH 150 epochs, full query and database sets, the papers' loss weights. The papers start
from ImageNet weights; pass ``--init`` (converted with ``deephash-convert``) to do the same.

``cpu-pretrained`` is built on the working recipe of the zoo (``scratch``): it first pretrains the family's
trunk as a classifier on the experiment's training set (for a mosaic, ``mosaic-single``: the Fashion-MNIST items
its tiles are cut from, one per image on a random tile of the same canvas; one trunk per experiment, shared by
every arm and seed, as one set of ImageNet weights would be), then trains each cell's hashing objective from it
for a fixed number of steps on the whole training set, and scores mAP@all on seeded query and database subsets.
Its sizes are set so that one experiment (both code lengths, three seeds) fits in about 3 hours on 2 CPU cores;
see ``deephash-experiment --help``.

Every cpu-pretrained cell trains on and is scored on one split (seed 0's, ``eval_seed``: the benchmark split,
which for a mosaic draws the training mosaics, and the query and database subsets), as a paper scores every method
on one split, so that the seeds vary the training alone (initialisation, data order, flips): with a draw per
seed, the draw moved all arms of a seed together (measured in the README) and the verdicts counted that as
spread. Its DATH cells open the attention gates (``attn_gate_init=1``, see
:func:`deephash_zoo.models.attention.open_attention_gates`): with DANet's start at 0, 300 steps left every
gamma within 0.002 of 0, DATH-C computed DATH-N's function and DATH-S DATH-1's to 0.0002 mAP, and the
ablation could not say anything about attention.

``cpu-pretrained-long`` is ``cpu-pretrained`` with 936 hashing steps a cell (2 epochs of Fashion-MNIST, the
zoo's hashing stage) instead of 300: it asks whether the seeds' spread, which left some orderings undecided at 300
steps, shrinks when each cell trains longer. At 3.1 times the cost a cell, it runs only the arms a claim needs.

``tiny`` and ``tiny-pretrained`` are for tests: two steps, a few dozen images, two seeds; their numbers
mean nothing.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

__all__ = ['Budget', 'BUDGETS', 'get_budget']


@dataclass(frozen=True)
class Budget:
    """Training and evaluation settings shared by every run of one experiment."""

    name: str
    description: str
    img_size: Optional[int]  # None: the model's default (224)
    train_subset: Optional[int]  # None: the protocol's whole training set
    batch_size: int
    epochs: Dict[str, int]  # per model family ('dath', 'admth')
    query_subset: Optional[int]
    db_subset: Optional[int]
    seeds: Tuple[int, ...]
    max_steps: Optional[int] = None
    loss_args: Dict[str, Dict[str, float]] = field(default_factory=dict)  # per family
    topk: Dict[str, Optional[int]] = field(default_factory=dict)  # mAP@K per dataset; absent/None: all
    recipe: str = 'paper'  # the training recipe of every cell (deephash_zoo.training.recipes)
    pretrain_epochs: Optional[int] = None  # a trunk pretraining stage of this many epochs (None: none)
    default_bits: Optional[Tuple[int, ...]] = None  # code lengths run when none are given (None: all four)
    attn_gate_init: Optional[float] = None  # DATH cells: --attn-gate-init (None: the recipe's, DANet's 0)
    eval_seed: Optional[int] = None  # every cell's split and scoring subsets are this seed's (None: its own seed's)

    def eval_seed_for(self, seed: int) -> int:
        """The seed whose query and database subsets score the cell of training seed ``seed``."""
        return seed if self.eval_seed is None else self.eval_seed

    def epochs_for(self, family: str) -> int:
        return self.epochs[family]

    def loss_args_for(self, family: str) -> Dict[str, float]:
        return dict(self.loss_args.get(family, {}))

    def topk_for(self, data: str) -> Optional[int]:
        return self.topk.get(data)


BUDGETS: Dict[str, Budget] = {
    'cpu-small': Budget(
        name='cpu-small',
        description='2 CPU cores, < 30 min per experiment: 64x64 input, 1,024 seeded training images, batch 64, '
                    'DATH 1 epoch (16 steps, gamma=0), ADMTH 2 epochs (32 steps); 300 queries x 1,500 database '
                    'items; seeds 0, 1, 2; from scratch',
        img_size=64, train_subset=1024, batch_size=64, epochs={'dath': 1, 'admth': 2},
        query_subset=300, db_subset=1500, seeds=(0, 1, 2),
        loss_args={'dath': {'gamma': 0.0}}, topk={'mosaic': 100},
    ),
    'paper': Budget(
        name='paper',
        description="the papers' settings for a GPU: 224x224, the whole training set, batch 128, DATH 200 epochs, "
                    'ADMTH 150 epochs, full query and database sets, the papers\' loss weights; seeds 0, 1, 2',
        img_size=224, train_subset=None, batch_size=128, epochs={'dath': 200, 'admth': 150},
        query_subset=None, db_subset=None, seeds=(0, 1, 2), topk={'mosaic': 5000},
    ),
    'cpu-pretrained': Budget(
        name='cpu-pretrained',
        description='2 CPU cores, about 3 h per experiment at 32 and 64 bits: recipe scratch at 64x64, the trunk '
                    'pretrained 5 epochs on the whole training set (cross-entropy; shared by every cell), then 300 '
                    'hashing steps of batch 128 on the whole training set per cell, DATH\'s attention gates opened at '
                    '1 (--attn-gate-init); mAP@all on 2,000 queries x 10,000 database items, the same (seed 0\'s) for '
                    'every cell; training seeds 0, 1, 2',
        # epochs only cap the schedule: 300 steps end each cell (0.64 epoch of Fashion-MNIST, 7.7 of the mosaic)
        img_size=64, train_subset=None, batch_size=128, epochs={'dath': 100, 'admth': 100}, max_steps=300,
        query_subset=2000, db_subset=10000, seeds=(0, 1, 2), recipe='scratch', pretrain_epochs=5,
        default_bits=(32, 64), attn_gate_init=1.0, eval_seed=0,
    ),
    'tiny': Budget(
        name='tiny',
        description='tests only: 2 steps of 8 images at 64x64, 20 queries x 60 database items, seeds 0 and 1',
        img_size=64, train_subset=32, batch_size=8, epochs={'dath': 1, 'admth': 1}, max_steps=2,
        query_subset=20, db_subset=60, seeds=(0, 1), loss_args={'dath': {'gamma': 0.0}}, topk={'mosaic': 10},
    ),
    'tiny-pretrained': Budget(
        name='tiny-pretrained',
        description='tests only: the cpu-pretrained stages at toy size (a 1-epoch trunk pretraining of 32 images, '
                    '2 hashing steps of 8), 20 queries x 60 database items, seeds 0 and 1',
        img_size=64, train_subset=32, batch_size=8, epochs={'dath': 1, 'admth': 1}, max_steps=2,
        query_subset=20, db_subset=60, seeds=(0, 1), recipe='scratch', pretrain_epochs=1, default_bits=(16,),
    ),
}

BUDGETS['cpu-pretrained-long'] = dataclasses.replace(
    BUDGETS['cpu-pretrained'], name='cpu-pretrained-long', max_steps=936,  # 2 x the 468 batches of Fashion-MNIST
    description='2 CPU cores, about 3 h per experiment for two one-stream arms at two lengths: recipe scratch at '
                '64x64, the trunk pretrained 5 epochs on the whole training set (cross-entropy; shared by every '
                'cell), then 936 hashing steps of batch 128 (2 epochs of Fashion-MNIST, as the zoo\'s hashing stage; '
                'cpu-pretrained runs 300) on the whole training set per cell, DATH\'s attention gates opened at 1 '
                '(--attn-gate-init); mAP@all on 2,000 queries x 10,000 database items, the same (seed 0\'s) for '
                'every cell; training seeds 0, 1, 2')


def get_budget(name: str) -> Budget:
    """The budget called ``name``, or a ValueError listing the known ones."""
    if name not in BUDGETS:
        raise ValueError(f'unknown budget {name!r}; expected one of {", ".join(BUDGETS)}')
    return BUDGETS[name]
