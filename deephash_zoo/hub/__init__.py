"""Checkpoints in timm's Hugging Face Hub layout (config.json + model.safetensors + README.md card), the
Hugging Face cache seeding that makes ``pretrained=True`` work offline, model cards, publishing, and
ImageNet weight conversion. Only safetensors are ever loaded (torchvision's ``.pth`` source goes through
``torch.load(weights_only=True)`` in :mod:`.convert`)."""
from .cache import create_pretrained, hub_repo_id, repo_cache_folder, seed_hf_cache
from .checkpoint import (
    CHECKPOINT_FILES,
    load_checkpoint,
    read_checkpoint_config,
    replace_dir,
    resolve_checkpoint_dir,
    save_checkpoint,
    weights_sha256,
)

__all__ = ['CHECKPOINT_FILES', 'load_checkpoint', 'read_checkpoint_config', 'resolve_checkpoint_dir', 'save_checkpoint',
           'weights_sha256', 'replace_dir', 'seed_hf_cache', 'create_pretrained', 'hub_repo_id', 'repo_cache_folder']
