"""The checkpoints the zoo publishes: one pretrained tag per data set a model was trained on, each with its card
``hub_cards/<model>.<tag>.md`` and its Hub repository ``deephash-zoo/<model>.<tag>``. timm's
``list_pretrained`` lists exactly these (a test compares them with the cards), and a checkpoint's config carries
the tag of the data it was trained on.

``fmnist``: Fashion-MNIST (the zoo build's headline models and the DATH variant ablation). The first tag is the
default of ``pretrained=True``.

No multi-label weights are published. The ``mosaic`` tag, the first multi-label benchmark's weights, was withdrawn:
its checkpoints (the ``cpu-small`` budget, 16-32 steps from scratch) gave every mosaic one code (recall within
radius 2 of 1.0) and scored the random-codes level (mAP@100 0.82 against 0.819), so they were not worth a download.
The ``cpu-pretrained`` experiments on ``mosaic-pair`` learn (twice the random level) and keep their checkpoints in
the work folder; publishing them is a tag to add here with its cards.
"""
from typing import Any, Dict, Optional, Tuple

__all__ = ['PUBLISHED_TAGS', 'UNPUBLISHED', 'DATASET_TAGS', 'TRAINED_INPUT_SIZE', 'tags_of', 'tag_for_dataset',
           'tag_input_size', 'with_trained_input_size']

_DATH_VARIANTS = ('dath_alexnet', 'dath_s', 'dath_c', 'dath_n', 'dath1')
_LENGTHS = (16, 32, 48, 64)

PUBLISHED_TAGS: Dict[str, Tuple[str, ...]] = {
    **{f'{v}_{b}': ('fmnist',) for v in _DATH_VARIANTS for b in _LENGTHS},
    'admth_cnnf_multi': ('fmnist',),
    'dmlh_cnnf_multi': ('fmnist',),
}

# registered architectures with no published checkpoint (no hf_hub_id, so timm.list_pretrained leaves them out):
# the single-length CNN-F models, trained by the multi-task experiment (the paper's single-task arm and the extra
# row with attention); the zoo build does not train them on Fashion-MNIST
UNPUBLISHED: Tuple[str, ...] = tuple(f'{family}_cnnf_{b}' for family in ('admth', 'dmlh') for b in _LENGTHS)

DATASET_TAGS = {'fashion-mnist': 'fmnist'}

# The input size each tag's weights were trained and evaluated at. timm's named route
# (``create_model('dath_alexnet_32', pretrained=True)``) takes the registered pretrained_cfg, not the checkpoint's
# config.json, so the entrypoints set it on the model they load (``with_trained_input_size``); the registry itself
# keeps the papers' 224x224, the architectures' size for a fresh model (and what timm's own model tests use).
TRAINED_INPUT_SIZE = {'fmnist': 64}


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
