"""How much compute an experiment spends: named budgets, so a table always says what produced it.

``cpu-small`` is sized to finish each experiment on 2 CPU cores in under 30 minutes. It trains from
scratch (no ImageNet weights can be downloaded here) on a seeded 1,024-image training subset at
64x64 (AlexNet/CNN-F need at least 63 pixels), evaluates 300 queries against 1,500 database items,
and repeats with three seeds. From scratch, DATH's quantisation term (gamma=0.01) pulls every code
onto one vector within a few dozen steps, so this budget trains DATH with gamma=0 (measured in the
README). Every budget trains with the ``paper`` recipe (``deephash_zoo.training.recipes``), whose
settings each checkpoint's config.json records. The committed cpu-small tables were made before the
recipes existed, with the mean loss form, ADMTH at SGD lr 1e-3 and the earlier initialisation; a 10x
higher DATH rate collapsed every code within one epoch (mAP@all 0.104 = chance on Fashion-MNIST).

``paper`` is the papers' own setting for a GPU: 224x224, whole training set, batch 128, DATH 200
epochs, ADMTH 150 epochs, full query and database sets, the papers' loss weights. The papers start
from ImageNet weights; pass ``--init`` (converted with ``deephash-convert``) to do the same.

``tiny`` is for tests: two steps, a few dozen images, two seeds; its numbers mean nothing.
"""
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
    'tiny': Budget(
        name='tiny',
        description='tests only: 2 steps of 8 images at 64x64, 20 queries x 60 database items, seeds 0 and 1',
        img_size=64, train_subset=32, batch_size=8, epochs={'dath': 1, 'admth': 1}, max_steps=2,
        query_subset=20, db_subset=60, seeds=(0, 1), loss_args={'dath': {'gamma': 0.0}}, topk={'mosaic': 10},
    ),
}


def get_budget(name: str) -> Budget:
    """The budget called ``name``, or a ValueError listing the known ones."""
    if name not in BUDGETS:
        raise ValueError(f'unknown budget {name!r}; expected one of {", ".join(BUDGETS)}')
    return BUDGETS[name]
