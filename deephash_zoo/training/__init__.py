"""Training: one trainer for every model, resumable, single process or DDP."""
from .allocator import keep_freed_memory
from .trainer import TrainConfig, family_defaults, train

__all__ = ['TrainConfig', 'family_defaults', 'keep_freed_memory', 'train']
