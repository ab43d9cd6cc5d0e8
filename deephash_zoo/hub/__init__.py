"""Checkpoints in timm's Hugging Face Hub layout (config.json + model.safetensors)."""
from .checkpoint import (
    CHECKPOINT_FILES,
    load_checkpoint,
    read_checkpoint_config,
    resolve_checkpoint_dir,
    save_checkpoint,
    weights_sha256,
)

__all__ = ['CHECKPOINT_FILES', 'load_checkpoint', 'read_checkpoint_config', 'resolve_checkpoint_dir', 'save_checkpoint',
           'weights_sha256']
