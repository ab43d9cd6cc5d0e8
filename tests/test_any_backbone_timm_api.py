"""``hash_model`` / ``hash_backbone`` honour timm's model API as the plain backbone does."""
from typing import Dict

import pytest
import timm
import timm.optim
import torch
from timm.models import group_parameters

import deephash_zoo
from deephash_zoo.hub.checkpoint import save_checkpoint

VIT = dict(backbone='vit_tiny_patch16_224', img_size=64)


def _images(size: int = 64, chans: int = 3) -> torch.Tensor:
    return torch.randn(2, chans, size, size)


def _vit(**kwargs) -> torch.nn.Module:
    return deephash_zoo.hash_model(VIT['backbone'], bits=64, img_size=VIT['img_size'], **kwargs)


def _weight_decay(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> Dict[str, float]:
    by_id = {id(p): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_optimizer_factory_spares_the_backbones_no_weight_decay_parameters():
    model = _vit()
    decay = _weight_decay(timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05), model)
    assert decay['backbone.cls_token'] == decay['backbone.pos_embed'] == 0.0
    assert decay['hash.fc.0.weight'] == 0.05
    assert model.no_weight_decay() == {'backbone.' + n for n in model.backbone.no_weight_decay()}


@pytest.mark.parametrize('backbone, kwargs', [('resnet18', {}), ('vit_tiny_patch16_224', {'img_size': 64})])
def test_layer_decay_groups_are_the_backbones_with_the_hash_layers_last(backbone, kwargs):
    model = deephash_zoo.hash_model(backbone, bits=64, **kwargs)
    plain = timm.create_model(backbone, num_classes=0, **kwargs)
    ours = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    theirs = group_parameters(plain, plain.group_matcher(coarse=False), reverse=True)
    assert {n: ours['backbone.' + n] for n in theirs} == theirs
    assert ours['hash.fc.0.weight'] == max(ours.values()) >= max(theirs.values())


def test_grad_checkpointing_reaches_the_backbone():
    model = _vit()
    model.set_grad_checkpointing()
    assert model.backbone.grad_checkpointing


def test_forward_intermediates_and_pruning_are_the_backbones():
    model = _vit().eval()
    x = _images()
    ours = model.forward_intermediates(x, indices=2, intermediates_only=True)
    theirs = model.backbone.forward_intermediates(x, indices=2, intermediates_only=True)
    assert len(ours) == 2 and all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert model.prune_intermediate_layers(2) == [10, 11]
    assert model.num_classes == 0 and model.bits == () and len(model.backbone.blocks) == 12


def test_feature_info_names_the_backbones_modules_in_the_wrapper():
    model = deephash_zoo.hash_model('resnet18', bits=64)
    modules = dict(model.named_modules())
    assert [i['module'] for i in model.feature_info] == ['backbone.' + i['module'] for i in model.backbone.feature_info]
    assert all(i['module'] in modules for i in model.feature_info)


def test_features_only_gives_the_backbones_feature_extractor():
    """Both routes: what ``timm.create_model(backbone, features_only=True)`` gives (hash layers need pooled input)."""
    x = _images()
    want = [f.shape for f in timm.create_model('resnet18', features_only=True, out_indices=(2, 4))(x)]
    asked = dict(bits=64, features_only=True, out_indices=(2, 4))
    for net in (timm.create_model('hash_backbone', backbone='resnet18', **asked),
                deephash_zoo.hash_model('resnet18', **asked)):
        assert [f.shape for f in net(x)] == want


def test_features_only_from_a_checkpoint_holds_its_weights(tmp_path):
    model = deephash_zoo.hash_model('resnet18', bits=64).eval()
    save_checkpoint(model, tmp_path / 'ck')
    net = timm.create_model(f'local-dir:{tmp_path / "ck"}', pretrained=True, features_only=True).eval()
    x = _images()
    assert torch.equal(net(x)[-1], model.forward_features(x))
    assert 'state_dict' not in net.pretrained_cfg


def test_timm_route_records_the_hash_models_cfg_and_the_overlay():
    ours = timm.create_model('hash_backbone', backbone='resnet18', bits=64)
    theirs = deephash_zoo.hash_model('resnet18', bits=64)
    assert ours.pretrained_cfg == theirs.pretrained_cfg
    assert ours.pretrained_cfg['first_conv'] == 'backbone.conv1' and ours.pretrained_cfg['classifier'] == ('hash.fc.0',)
    overlaid = timm.create_model('hash_backbone', backbone='resnet18', bits=64,
                                 pretrained_cfg_overlay=dict(input_size=(3, 96, 96)))
    assert overlaid.pretrained_cfg['input_size'] == (3, 96, 96)


@pytest.mark.parametrize('kwargs, out', [({'in_chans': 1}, 64), ({'num_classes': 8}, 8)])
def test_timm_route_checkpoint_loads_with_other_channels_or_width(tmp_path, kwargs, out):
    save_checkpoint(timm.create_model('hash_backbone', backbone='resnet18', bits=64), tmp_path / 'ck')
    loaded = timm.create_model(f'local-dir:{tmp_path / "ck"}', pretrained=True, **kwargs)
    assert loaded(_images(chans=kwargs.get('in_chans', 3))).shape == (2, out)


@pytest.mark.parametrize('backbone, kwargs', [('resnet18', {}), ('vit_tiny_patch16_224', {'img_size': 64})])
def test_hash_layer_on_an_unpooled_backbone_is_refused_at_creation(backbone, kwargs):
    with pytest.raises(ValueError, match="global_pool='' leaves the backbone's unpooled feature map"):
        deephash_zoo.hash_model(backbone, bits=64, global_pool='', **kwargs)
    with pytest.raises(ValueError, match="global_pool='' leaves the backbone's unpooled feature map"):
        timm.create_model('hash_backbone', backbone=backbone, bits=64, global_pool='', **kwargs)
    unpooled = deephash_zoo.hash_model(backbone, bits=64, global_pool='', num_classes=0, **kwargs)
    assert unpooled(_images()).dim() in (3, 4)  # timm's unpooled features, as the backbone gives them


def test_reset_classifier_refuses_a_hash_layer_after_unpooling():
    model = deephash_zoo.hash_model('resnet18', bits=64)
    model.reset_classifier(0, '')
    with pytest.raises(ValueError, match="global_pool='' leaves the backbone's unpooled feature map"):
        model.reset_classifier(64)
    assert model.bits == () and model(_images()).dim() == 4  # untouched by the refused call
    model.reset_classifier(64, 'avg')
    assert model(_images()).shape == (2, 64)


def test_fixed_size_vit_names_the_size_it_takes():
    model = _vit()
    with pytest.raises(ValueError, match='this backbone takes 64x64 images only, got 96x96'):
        model.encode(_images(96))
    assert model(_images()).shape == (2, 64)
    assert _vit(dynamic_img_size=True)(_images(96)).shape == (2, 64)
