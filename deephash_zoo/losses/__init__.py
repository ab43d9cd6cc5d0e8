"""Training objectives of the two papers."""
from .admth import ADMTHLoss, BranchLabelLoss, ConsistencyLoss, PairwiseLikelihoodLoss
from .dath import ClassificationLoss, DATHLoss, QuantizationLoss, TripletLikelihoodLoss
from .similarity import label_similarity

__all__ = [
    'ADMTHLoss',
    'BranchLabelLoss',
    'ClassificationLoss',
    'ConsistencyLoss',
    'DATHLoss',
    'PairwiseLikelihoodLoss',
    'QuantizationLoss',
    'TripletLikelihoodLoss',
    'label_similarity',
]
