"""Training: one trainer for every model, resumable, single process or DDP."""
from .trainer import TrainConfig, family_defaults, train

__all__ = ['TrainConfig', 'family_defaults', 'train']
