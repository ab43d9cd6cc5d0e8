"""What makes the models learn from scratch: initialisation, the exact fc6 fold, the lr schedule, the
pretraining stage and its trunk file, and the scratch recipe itself on a few hundred images."""
import json
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.models.head import FcMlp
from deephash_zoo.models.pretrain import TrunkClassifier, expand_trunk_state
from deephash_zoo.training import TrainConfig, train
from deephash_zoo.training.recipes import RECIPES, get_recipe
from deephash_zoo.training.trainer import TRUNK_FILE, _lr_factor, resolve_settings
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')


def test_init_keeps_the_signal_scale():
    """He fan_in for convolutions (fc6 std sqrt(2 / 9216) = 0.0147), LeCun for the tanh hash layer."""
    model = timm.create_model('dath_alexnet_32')
    fc6 = model.head.mlps[0].fc6.weight
    assert fc6.std().item() == pytest.approx(math.sqrt(2 / fc6[0].numel()), rel=0.02)
    conv1 = model.streams[0].features[0].weight
    assert conv1.std().item() == pytest.approx(math.sqrt(2 / conv1[0].numel()), rel=0.05)
    hash_fc = model.head.hash.fc[0].weight
    assert hash_fc.std().item() == pytest.approx(1 / math.sqrt(hash_fc.shape[1]), rel=0.05)
    assert all(float(b.detach().abs().max()) == 0 for n, b in model.named_parameters() if n.endswith('.bias'))


@pytest.mark.parametrize('name', ['dath_alexnet_16', 'dath1_16', 'admth_cnnf_multi', 'dmlh_cnnf_32', 'trunk', 'alone'])
def test_fc6_fc7_are_he_initialised_in_every_stream_and_branch(name):
    """fc6/fc7 skip torch's default initialisation and are drawn once, by FcMlp (init_weights leaves them be):
    every stream's and branch's copy, the pretraining model's and one built alone hold He normal weights and
    zero biases, not what the allocator left there."""
    torch.manual_seed(0)
    if name == 'trunk':
        mlps = [TrunkClassifier('cnnf', num_labels=10).mlp]
    elif name == 'alone':
        mlps = [FcMlp(256)]
    else:
        mlps = list(timm.create_model(name).head.mlps)
    assert len(mlps) == {'dath_alexnet_16': 2, 'admth_cnnf_multi': 4}.get(name, 1)
    for mlp in mlps:
        for fc, fan_in in ((mlp.fc6, 256 * 6 * 6), (mlp.fc7, 4096)):
            weight = fc.weight.detach()
            assert float(weight.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
            assert abs(float(weight.mean())) < 1e-4
            assert not fc.bias.any()


def test_centred_hash_layer_splits_every_bit():
    """A fresh hash layer on post-ReLU features gives most images the same code (the shared part of the
    pre-activation outweighs the spread); centred on a batch, every bit splits it and codes differ."""
    torch.manual_seed(0)
    model = timm.create_model('dath_n_32').eval()
    images = torch.randn(128, 3, 64, 64)
    before = len(torch.unique(model.encode(images), dim=0))
    with torch.no_grad():
        model.head.hash.center_on(model.forward_head(model.forward_features(images), pre_logits=True))
    codes = model.encode(images)
    assert len(torch.unique(codes, dim=0)) >= 0.9 * len(codes) > before
    ones = (codes > 0).float().mean(0)
    assert float(ones.min()) > 0.25 and float(ones.max()) < 0.75  # every bit splits the batch


def test_centring_follows_admth_branches():
    """ADMTH's hash layer k reads branch k's block of features: centring uses the same block."""
    torch.manual_seed(0)
    model = timm.create_model('admth_cnnf_multi').eval()
    images = torch.randn(64, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(images), pre_logits=True)
        model.head.hash.center_on(feats)
        pre = [fc(feats[:, i * 4096:(i + 1) * 4096]) for i, fc in enumerate(model.head.hash.fc)]
    assert all(float(p.mean(0).abs().max()) < 1e-4 for p in pre)


@pytest.mark.parametrize('side', [1, 2, 3, 6])
def test_fc6_fold_equals_the_repeated_map_convolution(side):
    """A map smaller than fc6's window runs as one matrix product with summed taps: same output and
    same weight gradient as the convolution over the nearest-repeated map."""
    torch.manual_seed(side)
    mlp = FcMlp(16, 32, drop_rate=0.0).double()
    x = torch.randn(3, 16, side, side, dtype=torch.float64)
    folded = mlp(x)
    (folded.square().sum()).backward()
    grad_folded = mlp.fc6.weight.grad.clone()
    mlp.zero_grad()
    repeated = F.interpolate(x, size=(6, 6), mode='nearest')
    reference = mlp.act7(mlp.fc7(mlp.act6(mlp.fc6(repeated))))
    (reference.square().sum()).backward()
    assert torch.allclose(folded, reference, atol=1e-10)
    assert torch.allclose(grad_folded, mlp.fc6.weight.grad, atol=1e-10)


def test_encoding_reuses_fc6_tap_sums_until_the_weight_changes():
    """Without autograd the summed taps are kept between calls (reading 151 MB per call was most of a 64x64
    batch-1 encode) and made again after any change of the weight: in place, by load_state_dict, or a copy."""
    torch.manual_seed(0)
    mlp = FcMlp(16, 32, drop_rate=0.0).eval()
    x = torch.randn(2, 16, 1, 1)
    with torch.no_grad():
        first = mlp(x)
        sums = mlp._fc6_sums[1]
        assert torch.equal(mlp(x), first) and mlp._fc6_sums[1] is sums  # reused
        mlp.fc6.weight.mul_(2.0)  # an optimiser step is in place too
        assert not torch.equal(mlp(x), first)
        mlp.load_state_dict({k: v * 3.0 for k, v in mlp.state_dict().items()})
        expected = mlp.act7(mlp.fc7(mlp.act6(mlp.fc6(F.interpolate(x, size=(6, 6), mode='nearest')))))
        assert torch.allclose(mlp(x), expected, atol=1e-5)
    with torch.inference_mode():
        encoded = mlp(x)
    with torch.no_grad():
        assert torch.equal(mlp(x), encoded)  # a sum made in inference mode serves no_grad calls
    with torch.inference_mode():
        frozen = FcMlp(16, 32, drop_rate=0.0).eval()  # weights made in inference mode keep no version: no cache
        frozen.load_state_dict(mlp.state_dict())
        assert torch.equal(frozen(x), encoded) and getattr(frozen, '_fc6_sums', None) is None
    out = mlp(x)  # with autograd: the sums are part of the graph, not the kept tensor
    out.sum().backward()
    assert mlp.fc6.weight.grad is not None and torch.allclose(out, encoded)


def test_lr_warmup_then_cosine_and_step_schedules():
    cosine = dict(warmup_steps=10, lr_schedule='cosine', lr_step_epochs=0, lr_decay=1.0)
    assert _lr_factor(0, 100, 10, cosine) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert _lr_factor(9, 100, 10, cosine) == pytest.approx(0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert _lr_factor(50, 100, 10, cosine) == pytest.approx(0.5)
    assert _lr_factor(100, 100, 10, cosine) == pytest.approx(0.0)
    step = dict(warmup_steps=0, lr_schedule='step', lr_step_epochs=2, lr_decay=0.1)
    assert [_lr_factor(s, 100, 10, step) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])


def test_recipes_resolve_and_command_line_wins():
    scratch = resolve_settings(TrainConfig(model='dath_alexnet_32', recipe='scratch'))
    assert scratch == get_recipe('scratch', 'dath_alexnet_32').as_dict()
    assert resolve_settings(TrainConfig(model='dath_alexnet_32', recipe='scratch', lr=0.5))['lr'] == 0.5
    paper = resolve_settings(TrainConfig(model='admth_cnnf_multi'))
    assert (paper['optimizer'], paper['loss_reduction'], paper['batch_size']) == ('sgd', 'sum', 128)
    assert resolve_settings(TrainConfig(model='alexnet', stage='pretrain'))['lr_schedule'] == 'cosine'
    with pytest.raises(ValueError, match="unknown recipe 'fast'; expected one of paper, scratch"):
        resolve_settings(TrainConfig(model='dath_alexnet_32', recipe='fast'))
    assert set(RECIPES) == {'paper', 'scratch'}


@pytest.mark.parametrize('arch, name, copies', [('alexnet', 'dath_alexnet_16', 2), ('alexnet', 'dath_n_16', 1),
                                                ('cnnf', 'admth_cnnf_multi', 4), ('cnnf', 'dmlh_cnnf_multi', 4)])
def test_trunk_file_fills_every_stream_and_branch(arch, name, copies):
    trunk = TrunkClassifier(arch, num_labels=10).trunk_state()
    model = timm.create_model(name)
    state, used = expand_trunk_state(trunk, arch, model)
    assert used == len(trunk)
    fc6 = [v for k, v in state.items() if k.endswith('fc6.weight')]
    assert len(fc6) == copies and all(torch.equal(w, trunk['mlp.fc6.weight']) for w in fc6)
    conv1 = [v for k, v in state.items() if k.endswith('features.0.weight')]
    assert all(torch.equal(w, trunk['trunk.features.0.weight']) for w in conv1)
    assert not any('hash' in k or 'attn' in k for k in state)  # those start fresh


def test_trunk_of_another_architecture_is_refused():
    trunk = TrunkClassifier('cnnf', num_labels=10).trunk_state()
    with pytest.raises(ValueError, match='holds a cnnf trunk, but DATH is built on alexnet'):
        expand_trunk_state(trunk, 'cnnf', timm.create_model('dath_alexnet_16'))


def test_label_weight_is_an_admth_hashing_setting():
    """The label term is off in the papers' recipe, set per run, and refused where it means nothing."""
    assert get_recipe('paper', 'admth_cnnf_multi').label_weight == 0
    settings = resolve_settings(TrainConfig(model='dmlh_cnnf_multi', recipe='scratch', label_weight=2.0))
    assert settings['label_weight'] == 2
    with pytest.raises(ValueError, match="DATH's label term is its own J2"):
        resolve_settings(TrainConfig(model='dath_alexnet_32', recipe='scratch', label_weight=1.0))
    with pytest.raises(ValueError, match='pretraining stage is a classifier already'):
        resolve_settings(TrainConfig(model='cnnf', stage='pretrain', label_weight=1.0))
    with pytest.raises(ValueError, match='label_weight must be >= 0'):
        resolve_settings(TrainConfig(model='admth_cnnf_multi', label_weight=-1.0))


@needs_fmnist
def test_a_run_with_the_label_term_records_it_and_its_card_names_it(tmp_path):
    from deephash_zoo.hub.card import render_card

    run = tmp_path / 'admth'
    train(TrainConfig(model='admth_cnnf_16', recipe='scratch', data='fashion-mnist', img_size=64, subset=32,
                      batch_size=16, max_steps=2, log_every=1, label_weight=0.5, out=str(run)))
    steps = [r for r in map(json.loads, (run / 'train_log.jsonl').read_text().splitlines()) if r['event'] == 'step']
    assert steps and all(r['label'] > 0 for r in steps), steps
    assert json.loads((run / 'checkpoint' / 'config.json').read_text())['training']['label_weight'] == 0.5
    card = str(render_card(run / 'checkpoint'))
    assert "Not the paper's objective" in card and 'cross-entropy with weight 0.5' in card


@needs_fmnist
def test_a_run_with_balanced_pairs_records_it_and_its_card_names_it(tmp_path):
    """--loss-arg pair_balance=1 reaches ADMTH's pairwise term, config.json keeps it, the card says it is not the
    paper's objective; a run without it says nothing of the kind."""
    from deephash_zoo.hub.card import render_card

    common = dict(model='admth_cnnf_16', recipe='scratch', data='fashion-mnist', img_size=64, subset=32,
                  batch_size=16, max_steps=1, log_every=1)
    train(TrainConfig(**common, loss_args={'pair_balance': 1.0}, out=str(tmp_path / 'balanced')))
    config = json.loads((tmp_path / 'balanced' / 'checkpoint' / 'config.json').read_text())
    assert config['training']['loss_args'] == {'pair_balance': 1.0}
    balanced = str(render_card(tmp_path / 'balanced' / 'checkpoint'))
    assert "**Not the paper's objective**" in balanced and '`pair_balance` 1.0' in balanced
    train(TrainConfig(**common, out=str(tmp_path / 'paper')))
    paper = str(render_card(tmp_path / 'paper' / 'checkpoint'))  # its loss record lists pair_balance 0.0, no more
    assert "Not the paper's objective" not in paper and '"pair_balance": 0.0' in paper
    with pytest.raises(ValueError, match='pair_balance must be in'):
        train(TrainConfig(**common, loss_args={'pair_balance': 2.0}, out=str(tmp_path / 'bad')))
    assert not (tmp_path / 'bad').exists()


def _epoch_means(run) -> list:
    lines = (run / 'train_log.jsonl').read_text().splitlines()
    return [r for r in map(json.loads, lines) if r['event'] == 'epoch']


@needs_fmnist
@pytest.mark.slow
def test_scratch_recipe_lowers_j1_without_collapse(tmp_path):
    """512 images: a short pretraining stage, then DATH's objective with the scratch recipe from its trunk.
    The triplet term falls and held-out images do not collapse onto one code: at least as many distinct codes
    as classes, none holding half of the images (the paper recipe from random weights gives one code)."""
    common = dict(data='fashion-mnist', img_size=64, subset=512, batch_size=32, log_every=1)
    pre = tmp_path / 'pre'
    # batches of 32 from a fresh trunk: clipped gradients (the full-size stage uses batches of 128). 4 epochs at
    # lr 0.02 train a trunk as good for this test as 8 at 0.01 did, in half the time (AMD EPYC, 2 cores: triplet
    # ratio 0.46 against 0.51, 43 distinct codes against 27; 4 epochs at 0.01 gave 0.82 and 7)
    train(TrainConfig(model='alexnet', stage='pretrain', out=str(pre), epochs=4, lr=0.02, warmup_steps=16,
                      grad_clip=2.0, **common))
    run = tmp_path / 'hash'
    train(TrainConfig(model='dath_n_32', recipe='scratch', out=str(run), init=str(pre / TRUNK_FILE), epochs=3,
                      warmup_steps=5, gamma_ramp_steps=10, **common))
    epochs = _epoch_means(run)
    assert epochs[-1]['triplet'] < 0.8 * epochs[0]['triplet'], epochs
    config = json.loads((run / 'checkpoint' / 'config.json').read_text())
    assert config['training']['recipe'] == 'scratch' and config['training']['loss_reduction'] == 'mean'
    model = timm.create_model('local-dir:' + str(run / 'checkpoint'), pretrained=True).eval()
    from deephash_zoo.data import build_retrieval_data
    from deephash_zoo.retrieval.encoding import model_transform

    test = build_retrieval_data('fashion-mnist', transform=model_transform(model, 64), num_query=200)['query']
    images = torch.stack([test[i][0] for i in range(len(test))])
    codes = model.encode(images).numpy()
    _, counts = np.unique(codes, axis=0, return_counts=True)
    assert len(counts) >= 10 and counts.max() < 0.5 * len(codes), sorted(counts)[-5:]



def test_open_gate_starts_position_attention_as_a_mix_of_the_inputs_own_positions():
    """gamma = s and the value projection at the identity: with query and key at 0 the attention is uniform, so
    the module adds s x the mean over positions, exactly; channel attention's gamma is set likewise."""
    from deephash_zoo.models.attention import ChannelAttention, PositionAttention, open_attention_gates

    torch.manual_seed(0)
    pam, cam = PositionAttention(16), ChannelAttention(16)
    assert open_attention_gates(torch.nn.Sequential(pam, cam), 0.5) == 2
    assert pam.gamma.item() == 0.5 and cam.gamma.item() == 0.5
    with torch.no_grad():
        for conv in (pam.query, pam.key):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(pam(x), x + 0.5 * x.mean(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize('gate', [0.0, 1.0])
def test_attention_projections_learn_only_through_an_open_gate(gate):
    """The fixed point the gate breaks: at gamma = 0 the query / key / value projections get no gradient at all,
    so a short run cannot teach them; opened, they do from the first step."""
    from deephash_zoo.losses import DATHLoss
    from deephash_zoo.models.attention import open_attention_gates

    torch.manual_seed(0)
    model = timm.create_model('dath_s_16', num_labels=3)
    if gate:
        open_attention_gates(model, gate)
    model.train()
    codes = model(torch.randn(6, 3, 64, 64))
    DATHLoss()(codes, model.label_logits(codes), torch.tensor([0, 0, 1, 1, 2, 2]))['loss'].backward()
    pam = model.streams[0].attn
    grads = [pam.query.weight.grad, pam.key.weight.grad, pam.value.weight.grad]
    if gate:
        assert all(g is not None and g.abs().sum() > 0 for g in grads)
    else:
        assert all(g is None or g.abs().sum() == 0 for g in grads)


def test_attn_gate_init_is_a_dath_hashing_setting():
    """Off (DANet's 0) in both recipes; refused for the ADMTH family (SE has no gate) and the pretraining stage."""
    assert all(families['dath'].attn_gate_init == 0 for families in RECIPES.values())
    assert resolve_settings(TrainConfig(model='dath_s_32', recipe='scratch', attn_gate_init=1.0))['attn_gate_init'] == 1
    with pytest.raises(ValueError, match='SE attention has no gate'):
        resolve_settings(TrainConfig(model='admth_cnnf_multi', recipe='scratch', attn_gate_init=1.0))
    with pytest.raises(ValueError, match='trains a trunk without attention'):
        resolve_settings(TrainConfig(model='alexnet', stage='pretrain', attn_gate_init=1.0))
    with pytest.raises(ValueError, match='finite'):
        resolve_settings(TrainConfig(model='dath_s_32', attn_gate_init=float('nan')))


def test_flips_are_off_where_the_labels_name_a_position():
    """A horizontal flip of a 2x2 mosaic is the mosaic of its tiles with left and right swapped (each tile
    mirrored), so its (tile, class) labels change while its union labels do not: the recipes' flips stay off for
    mosaic-quadrant (config.json and the experiment's cells record it), and asking for them is refused."""
    from deephash_zoo.data.mosaic import compose_mosaic, quadrant_labels
    from deephash_zoo.experiments.budgets import get_budget
    from deephash_zoo.experiments.runs import cell_settings

    rng = np.random.default_rng(0)
    images, classes = rng.integers(0, 256, (4, 5, 5), dtype=np.uint8), np.array([0, 1, 2, 3])
    index, swapped = np.array([[0, 1, 2, 3]]), np.array([[1, 0, 3, 2]])
    mosaic, union = compose_mosaic(images, classes, index, 4)
    mirrored, mirrored_union = compose_mosaic(images[:, :, ::-1], classes, swapped, 4)
    assert np.array_equal(mosaic[:, :, ::-1], mirrored) and np.array_equal(union, mirrored_union)
    assert not np.array_equal(quadrant_labels(classes, index, 4), quadrant_labels(classes, swapped, 4))

    for stage, model in (('hash', 'dath_n_32'), ('hash', 'admth_cnnf_multi'), ('pretrain', 'alexnet')):
        recipe = 'scratch' if stage == 'hash' else 'paper'
        assert resolve_settings(TrainConfig(model=model, stage=stage, recipe=recipe, data='mosaic'))['flip']
        assert not resolve_settings(TrainConfig(model=model, stage=stage, recipe=recipe,
                                                data='mosaic-quadrant'))['flip']
        with pytest.raises(ValueError, match=r'--flip: the labels of mosaic-quadrant .*\(--no-flip\)'):
            resolve_settings(TrainConfig(model=model, stage=stage, recipe=recipe, data='mosaic-quadrant', flip=True))
    budget = get_budget('cpu-pretrained')
    assert cell_settings('dath_n_32', 'fashion-mnist', budget, None)['flip']
    assert not cell_settings('dath_n_32', 'mosaic-quadrant', budget, None)['flip']


@needs_fmnist
def test_a_run_with_open_gates_records_them_and_its_card_names_them(tmp_path):
    from safetensors import safe_open

    from deephash_zoo.hub.card import render_card

    run = tmp_path / 'dath'
    train(TrainConfig(model='dath_c_16', recipe='scratch', data='fashion-mnist', img_size=64, subset=32,
                      batch_size=16, max_steps=1, log_every=1, attn_gate_init=0.5, lr=0.0, out=str(run)))
    assert json.loads((run / 'checkpoint' / 'config.json').read_text())['training']['attn_gate_init'] == 0.5
    with safe_open(str(run / 'checkpoint' / 'model.safetensors'), 'pt') as f:
        assert f.get_tensor('streams.0.attn.gamma').item() == 0.5  # lr 0: the start as written
    card = str(render_card(run / 'checkpoint'))
    assert "Not DANet's start" in card and 'residual scale (gamma) at 0.5' in card
    plain = tmp_path / 'plain'  # DATH-N: nothing to open, and its config and card do not claim otherwise
    train(TrainConfig(model='dath_n_16', recipe='scratch', data='fashion-mnist', img_size=64, subset=32,
                      batch_size=16, max_steps=1, log_every=1, attn_gate_init=0.5, out=str(plain)))
    assert json.loads((plain / 'checkpoint' / 'config.json').read_text())['training']['attn_gate_init'] == 0
    assert "Not DANet's start" not in str(render_card(plain / 'checkpoint'))


@needs_fmnist
def test_pretraining_is_repeatable_to_the_byte(tmp_path):
    """The same seeded pretraining gives the same trunk tensors, so an experiment's cells, which record their
    digest, can be resumed on a fresh machine of the same kind after the stage is rerun there."""
    from deephash_zoo.utils import tensors_file_sha256

    digests = []
    for name in ('a', 'b'):
        out = tmp_path / name
        train(TrainConfig(model='alexnet', stage='pretrain', data='fashion-mnist', img_size=64, subset=32,
                          batch_size=16, epochs=1, log_every=1, out=str(out)))
        digests.append(tensors_file_sha256(out / TRUNK_FILE))  # not the file's bytes: see tensors_file_sha256
    assert digests[0] == digests[1]
