"""The query / database sets an evaluation ranks, and the mAP@K each benchmark reports.

Subsets (``query_subset`` / ``db_subset``) are drawn from the full protocol split with
``numpy.random.default_rng([seed, 1])`` (queries) and ``[seed, 2]`` (database), so a subset never mixes
in items from another part of the split.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ['protocol_sets', 'default_topk']


def _seeded_subset(n_total: int, n: Optional[int], seed: int, stream: int, what: str) -> Optional[np.ndarray]:
    if n is None:
        return None
    if n < 1:
        raise ValueError(f'{what} must be a positive integer, got {n}')
    if n > n_total:
        raise ValueError(f'{what} {n:,} is larger than the protocol\'s {n_total:,} items')
    return np.sort(np.random.default_rng([seed, stream]).choice(n_total, n, replace=False))


def protocol_sets(data: str, root: Optional[str], seed: int, transform: Any, query_subset: Optional[int] = None,
                  db_subset: Optional[int] = None, which: Sequence[str] = ('query', 'database')
                  ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The protocol's query / database sets (optionally seeded subsets) and a description of the split."""
    from deephash_zoo.data import build_retrieval_data

    sets = build_retrieval_data(data, root=root, seed=seed, transform=transform)
    info: Dict[str, Any] = {'data': data, 'seed': seed}
    out = {}
    for name, n, stream, flag in (('query', query_subset, 1, '--query-subset'),
                                  ('database', db_subset, 2, '--db-subset')):
        if name not in which:
            continue
        full = sets[name]
        idx = _seeded_subset(len(full), n, seed, stream, flag)
        out[name] = full if idx is None else full.subset(idx)
        short = 'queries' if name == 'query' else 'database'
        info[f'num_{short}'] = len(out[name])
        info[f'protocol_num_{short}'] = len(full)
        info['query_subset' if name == 'query' else 'db_subset'] = n
    first = next(iter(out.values()))
    info['num_labels'] = int(first.num_classes)
    info['multi_label'] = not all(s.single_label for s in out.values())
    return out, info


def default_topk(data: str, num_labels: int) -> Optional[int]:
    """The mAP@K the papers report for this benchmark (None: the whole ranking, as for own data)."""
    from deephash_zoo.data import PROTOCOLS, preset_name

    preset = preset_name(data, num_labels)
    return PROTOCOLS[preset].map_topk if preset is not None else None
