"""The checkpoints the zoo publishes: one pretrained tag per data set a model was trained on, each with its card
``hub_cards/<model>.<tag>.md`` and its Hub repository ``deephash-zoo/<model>.<tag>``. timm's
``list_pretrained`` lists exactly these (a test compares them with the cards), and a checkpoint's config carries
the tag of the data it was trained on.

``fmnist``: Fashion-MNIST (the zoo build's headline models and the DATH variant ablation); ``mosaic``: the 2x2
Fashion-MNIST mosaics of the multi-label experiments. The first tag is the default of ``pretrained=True``.
"""
from typing import Any, Dict, Optional, Tuple

__all__ = ['PUBLISHED_TAGS', 'UNPUBLISHED', 'DATASET_TAGS', 'TRAINED_INPUT_SIZE', 'tags_of', 'tag_for_dataset',
           'tag_input_size', 'with_trained_input_size']

_DATH_VARIANTS = ('dath_alexnet', 'dath_s', 'dath_c', 'dath_n', 'dath1')
_LENGTHS = (16, 32, 48, 64)

PUBLISHED_TAGS: Dict[str, Tuple[str, ...]] = {
    **{f'{v}_{b}': ('fmnist', 'mosaic') for v in _DATH_VARIANTS for b in _LENGTHS},
    'admth_cnnf_multi': ('fmnist', 'mosaic'),
    'dmlh_cnnf_multi': ('fmnist', 'mosaic'),
    **{f'admth_cnnf_{b}': ('mosaic',) for b in _LENGTHS},
}

# registered architectures with no checkpoint yet (no hf_hub_id, so timm.list_pretrained leaves them out): the
# ADMTH paper's single-task arm, trained by the multi-task experiment once it runs at a budget that can tell
UNPUBLISHED: Tuple[str, ...] = tuple(f'dmlh_cnnf_{b}' for b in _LENGTHS)

DATASET_TAGS = {'fashion-mnist': 'fmnist', 'mosaic': 'mosaic'}

# The input size each tag's weights were trained and evaluated at. timm's named route
# (``create_model('dath_alexnet_32', pretrained=True)``) takes the registered pretrained_cfg, not the checkpoint's
# config.json, so the entrypoints set it on the model they load (``with_trained_input_size``); the registry itself
# keeps the papers' 224x224, the architectures' size for a fresh model (and what timm's own model tests use).
TRAINED_INPUT_SIZE = {'fmnist': 64, 'mosaic': 64}


def tags_of(model_name: str) -> Tuple[str, ...]:
    """The published tags of a registered model (default first); a KeyError names the model."""
    try:
        return PUBLISHED_TAGS[model_name]
    except KeyError:
        raise KeyError(f'{model_name!r} has no published checkpoint tags') from None


def tag_for_dataset(dataset: Optional[str]) -> Optional[str]:
    """The pretrained tag of weights trained on ``dataset`` (None for data the zoo does not publish)."""
    return DATASET_TAGS.get(dataset or '')


def tag_input_size(tag: str) -> Tuple[int, int, int]:
    """``input_size`` of the registered pretrained_cfg of a published tag."""
    size = TRAINED_INPUT_SIZE[tag]
    return (3, size, size)


def with_trained_input_size(model: Any, loaded_from_registry: bool) -> Any:
    """``model`` whose pretrained_cfg says the input size its published weights were trained at, when they were
    just loaded by the registered name (``pretrained=True``); anything else is returned as it is."""
    cfg = getattr(model, 'pretrained_cfg', None)
    tag = cfg.get('tag') if loaded_from_registry and cfg else None
    if tag in TRAINED_INPUT_SIZE:
        model.pretrained_cfg = dict(cfg, input_size=tag_input_size(tag))
        model.default_cfg = model.pretrained_cfg
    return model
