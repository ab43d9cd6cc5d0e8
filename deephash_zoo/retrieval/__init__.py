"""Hamming-ranking retrieval metrics (exact, chunked, fast), FAISS binary indexes and image search over them.

The index module imports FAISS lazily (extra ``retrieval``), so the metrics work without it.
"""
from .codes import as_packed, hamming_distances
from .index import HashIndex
from .metrics import (
    TIE_BREAK,
    evaluate,
    hamming_radius_precision_recall,
    mean_average_precision,
    precision_recall_at_n,
    precision_recall_curve,
    tie_aware_mean_average_precision,
)
from .search import HashSearcher, SearchResult

__all__ = [
    'TIE_BREAK', 'HashIndex', 'HashSearcher', 'SearchResult', 'as_packed', 'evaluate', 'hamming_distances',
    'hamming_radius_precision_recall', 'mean_average_precision', 'precision_recall_at_n', 'precision_recall_curve',
    'tie_aware_mean_average_precision',
]
