"""The model contract: shapes, ranges, encode, gradients, attention at init, parameter counts."""
import numpy as np
import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config

import deephash_zoo
from deephash_zoo.models import list_hash_models
from deephash_zoo.models.published import UNPUBLISHED

SMALL = 64  # documented minimum is 63; 64 keeps every test on CPU fast
ALL_NAMES = list_hash_models()


@pytest.fixture(scope='module')
def images() -> torch.Tensor:
    return torch.randn(2, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(0))


def test_every_paper_name_is_registered():
    expected = {f'{v}_{b}' for v in ('dath_alexnet', 'dath_s', 'dath_c', 'dath_n', 'dath1') for b in (16, 32, 48, 64)}
    expected |= {'admth_cnnf_multi', 'dmlh_cnnf_multi'} | {f'admth_cnnf_{b}' for b in (16, 32, 48, 64)}
    expected |= {f'dmlh_cnnf_{b}' for b in (16, 32, 48, 64)}  # the ADMTH paper's single-task arm
    assert set(ALL_NAMES) == expected


@pytest.mark.parametrize('name', ALL_NAMES)
def test_shapes_ranges_and_encode(name, images):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        relaxed = model(images)
    assert relaxed.shape == (2, model.num_classes) == (2, sum(model.bits))
    # tanh's range; float32 rounds tanh(x) to exactly +-1 for |x| > 9, as a saturated (quantised) code is
    assert torch.isfinite(relaxed).all() and relaxed.abs().max() <= 1
    signs = model.encode(images)
    assert signs.dtype == torch.int8 and set(signs.unique().tolist()) <= {-1, 1}
    assert torch.equal(signs, torch.where(relaxed >= 0, 1, -1).to(torch.int8))
    packed = model.encode(images, packed=True)
    assert packed.dtype == torch.uint8 and packed.shape == (2, (model.num_classes + 7) // 8)
    cfg = model.pretrained_cfg
    for key in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'license'):
        assert cfg.get(key), key
    assert cfg['input_size'] == (3, 224, 224)  # the papers' (a fresh model); pretrained=True: the weights' 64
    if name in UNPUBLISHED:  # an architecture without a checkpoint: nothing for pretrained=True to fetch
        assert not cfg.get('hf_hub_id') and name not in timm.list_pretrained(name + '*')
    else:
        assert cfg['hf_hub_id'] == f"deephash-zoo/{name}.{cfg['tag']}" and cfg['tag'] == 'fmnist'


def test_multi_length_order_and_selection(images):
    model = timm.create_model('admth_cnnf_multi').eval()
    assert model.bits == (16, 32, 48, 64)
    with torch.no_grad():
        relaxed = model(images)
    split = model.split_codes(relaxed)
    assert [v.shape[1] for v in split.values()] == [16, 32, 48, 64]
    for bits, start in ((16, 0), (32, 16), (48, 48), (64, 96)):
        expected = torch.where(relaxed[:, start:start + bits] >= 0, 1, -1).to(torch.int8)
        assert torch.equal(model.encode(images, bits=bits), expected)
    # each length comes from its own branch: changing branch 2's hash layer moves only its slice
    with torch.no_grad():
        model.head.hash.fc[2].bias.add_(0.5)
        moved = model(images)
    changed = (moved != relaxed).any(dim=0)
    assert changed[48:96].all() and not changed[:48].any() and not changed[96:].any()


@pytest.mark.parametrize('bits', [12, 32])
def test_packing_round_trips_through_numpy(bits, images):
    model = timm.create_model('dath_n_32', num_classes=bits).eval()
    signs = model.encode(images).numpy()
    packed = model.encode(images, packed=True).numpy()
    np.testing.assert_array_equal(packed, np.packbits(signs > 0, axis=1))
    unpacked = np.unpackbits(packed, axis=1, count=bits)
    np.testing.assert_array_equal(np.where(unpacked == 1, 1, -1), signs)


def _attention_scales(model: torch.nn.Module) -> dict:
    return {n: p for n, p in model.named_parameters() if n.endswith('gamma')}


@pytest.mark.parametrize('name', ['dath_alexnet_16', 'dath1_16', 'dath_s_16', 'dath_c_16'])
def test_gradients_reach_attention_scales(name, images):
    model = timm.create_model(name, num_labels=3).train()
    codes = model(images)
    (codes.sum() + model.label_logits(codes).sum()).backward()
    scales = _attention_scales(model)
    assert scales, 'no attention scale found'
    for n, p in scales.items():
        assert p.grad is not None and p.grad.abs().item() > 0, n
    assert model.aux_classifier.weight.grad.abs().sum() > 0


def test_gradients_reach_se_and_every_branch(images):
    model = timm.create_model('admth_cnnf_multi', drop_rate=0.0).train()
    model(images).pow(2).sum().backward()
    se = model.trunk.attn
    assert se.fc1.weight.grad.abs().sum() > 0 and se.fc2.weight.grad.abs().sum() > 0
    for i, mlp in enumerate(model.head.mlps):
        assert mlp.fc6.weight.grad.abs().sum() > 0, f'branch {i} fc6'
        assert model.head.hash.fc[i].weight.grad.abs().sum() > 0, f'branch {i} hash layer'


@pytest.mark.parametrize('name', ['dath_s_32', 'dath_c_32', 'dath1_32'])
def test_zero_scale_attention_equals_plain_alexnet(name, images):
    """With its scale(s) at their initial 0, an attention stream is exactly the plain AlexNet stream."""
    attended = timm.create_model(name).eval()
    plain = timm.create_model('dath_n_32').eval()
    missing, unexpected = plain.load_state_dict(attended.state_dict(), strict=False)
    assert not missing and all('.attn.' in k for k in unexpected)
    with torch.no_grad():
        # a fresh PAM still has random query/key/value convs: the scale alone must silence them
        torch.testing.assert_close(attended(images), plain(images), rtol=0, atol=0)


def test_zero_scale_two_streams_each_equal_plain_alexnet(images):
    dath = timm.create_model('dath_alexnet_32').eval()
    plain = timm.create_model('dath_n_32').eval()
    with torch.no_grad():
        for i in range(2):
            plain.streams[0].load_state_dict(
                {k: v for k, v in dath.streams[i].state_dict().items() if not k.startswith('attn.')})
            torch.testing.assert_close(dath.streams[i](images), plain.streams[0](images), rtol=0, atol=0)
        # and once the scale moves, the stream differs
        dath.streams[0].attn.gamma.fill_(0.5)
        assert not torch.equal(dath.streams[0](images), plain.streams[0](images))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts():
    # AlexNet trunk (torchvision layout), weights + biases:
    #   conv1 64*3*11*11+64 = 23,296   conv2 192*64*5*5+192 = 307,392   conv3 384*192*3*3+384 = 663,936
    #   conv4 256*384*3*3+256 = 884,992   conv5 256*256*3*3+256 = 590,080            -> 2,469,696
    # fc6 (6x6 conv) 4096*256*6*6+4096 = 37,752,832;  fc7 4096*4096+4096 = 16,781,312 -> 54,534,144
    # one AlexNet stream without fc8 = 57,003,840 (torchvision's 61,100,840 minus fc8's 4,097,000)
    # PAM on 256 channels: query/key 256*32+32 = 8,224 each, value 256*256+256 = 65,792, gamma 1 -> 82,241
    # CAM: gamma 1.  Hash layer 48 bits: 4096*48+48 = 196,656
    # dath_alexnet_48 = 2 * 57,003,840 + 82,241 + 1 + 196,656 = 114,286,578
    assert _count(timm.create_model('dath_alexnet_48', device='meta')) == 114_286_578
    # CNN-F trunk: conv1 64*3*11*11+64 = 23,296  conv2 256*64*5*5+256 = 409,856
    #   conv3..5 3 * (256*256*3*3+256) = 3 * 590,080 = 1,770,240                    -> 2,203,392
    # SE (reduction 16 -> 16 channels): 256*16+16 + 16*256+256 = 8,464
    # four branches of fc6+fc7: 4 * 54,534,144 = 218,136,576
    # hash layers: 4096*(16+32+48+64) + (16+32+48+64) = 655,360 + 160 = 655,520
    # admth_cnnf_multi = 2,203,392 + 8,464 + 218,136,576 + 655,520 = 221,003,952
    assert _count(timm.create_model('admth_cnnf_multi', device='meta')) == 221_003_952
    # DMLH is the same without SE
    assert _count(timm.create_model('dmlh_cnnf_multi', device='meta')) == 221_003_952 - 8_464


def test_timm_data_pipeline_feeds_the_model():
    from PIL import Image

    model = timm.create_model('dath_n_16').eval()
    cfg = resolve_data_config(model=model)
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 1.0
    small = dict(cfg, input_size=(3, SMALL, SMALL))
    x = create_transform(**small)(Image.new('RGB', (28, 28), (120, 30, 200))).unsqueeze(0)
    assert model.encode(x).shape == (1, 16)


def test_paper_input_size_gives_six_by_six_features():
    model = timm.create_model('dath_alexnet_16').eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
        assert feats.shape == (1, 512, 6, 6)
        assert model.forward_head(feats, pre_logits=True).shape == (1, 4096)


@pytest.mark.parametrize('name, channels', [('dath_alexnet_16', [128, 384, 512, 512]),
                                           ('admth_cnnf_16', [64, 256, 256, 256])])
def test_features_only_taps(name, channels):
    for _ in range(2):  # timm edits the feature config it is given: a second model must get the same taps
        model = timm.create_model(name, features_only=True, device='meta')
        assert model.feature_info.channels() == channels and model.feature_info.reduction() == [4, 8, 16, 32]
    outs = timm.create_model(name, features_only=True)(torch.randn(1, 3, 96, 96))
    assert [o.shape[1] for o in outs] == channels


@pytest.mark.parametrize('bad, message', [
    (torch.randn(2, 1, SMALL, SMALL), '1 channels'),
    (torch.randn(3, SMALL, SMALL), 'rank 3'),
    (torch.zeros(2, 3, SMALL, SMALL, dtype=torch.uint8), 'integer tensor'),
    (torch.zeros(2, 3, SMALL, SMALL, dtype=torch.bool), 'got a boolean tensor'),  # both were 'an integer tensor'
    (torch.zeros(2, 3, SMALL, SMALL, dtype=torch.complex64), 'got a complex tensor'),
    (torch.randn(2, 3, 32, 32), 'at least 63x63'),
])
def test_bad_images_are_refused_in_forward_and_encode(bad, message):
    model = timm.create_model('dath_n_16').eval()
    with pytest.raises(ValueError, match=message):
        model(bad)
    with pytest.raises(ValueError, match=message):
        model.encode(bad)


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_images_are_refused_by_encode(value, images):
    model = timm.create_model('dath_n_16')
    bad = images.clone()
    bad[0, 1, 3, 4] = value
    with pytest.raises(ValueError, match='NaN or infinite'):
        model.encode(bad)


def test_unknown_bits_and_names(images):
    model = timm.create_model('admth_cnnf_multi')
    with pytest.raises(ValueError, match=r'code lengths \(16, 32, 48, 64\); got bits=20'):
        model.encode(images, bits=20)
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('dath_alexnet_33')
    with pytest.raises(ValueError, match="did you mean resnet50"):
        deephash_zoo.hash_model('resnet5O', bits=16)
    with pytest.raises(ValueError, match='distinct and ascending'):
        timm.create_model('admth_cnnf_multi', bits=(32, 16))
    headless = timm.create_model('dath_n_16', num_classes=0)
    with pytest.raises(ValueError, match='no hash layer'):
        headless.encode(images)


def test_num_classes_and_reset_classifier_semantics(images):
    model = timm.create_model('admth_cnnf_multi').eval()
    model.reset_classifier(0)
    assert model.bits == () and model(images).shape == (2, 4 * 4096)
    model.reset_classifier(160)  # the sum of the branch lengths restores one hash layer per branch
    assert model.bits == (16, 32, 48, 64) and model.head.hash.split_input
    model.reset_classifier(24, bits=(8, 16))  # explicit lengths
    assert model.bits == (8, 16) and model(images).shape == (2, 24)
    model.reset_classifier(42)  # any other width: one code over all branches
    assert model.bits == (42,) and model(images).shape == (2, 42)
    with pytest.raises(ValueError, match='does not match'):
        model.reset_classifier(10, bits=(4, 8))
    for width in ('32', 32.5, True):  # a str was a TypeError from a comparison, 32.5 became 32, True one bit
        with pytest.raises(ValueError, match=f'num_classes must be an integer >= 0 .*got {width!r}'):
            model.reset_classifier(width)


@pytest.mark.parametrize('backbone, kwargs', [('resnet18', {}), ('vit_tiny_patch16_224', {'img_size': 64})])
def test_hash_head_on_other_backbone_families(backbone, kwargs):
    model = deephash_zoo.hash_model(backbone, bits=(16, 32), num_labels=4, **kwargs)
    x = torch.randn(2, 3, 64, 64)
    codes = model(x)
    assert codes.shape == (2, 48) and codes.abs().max() < 1
    (codes.sum() + model.label_logits(codes).sum()).backward()
    assert all(fc.weight.grad.abs().sum() > 0 for fc in model.hash.fc)
    assert model.encode(x, bits=32, packed=True).shape == (2, 4)
    assert model.pretrained_cfg['classifier'] == ('hash.fc.0', 'hash.fc.1')
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.filterwarnings('ignore::FutureWarning', 'ignore::torch.jit.TracerWarning')  # trace's own, as for timm
@pytest.mark.parametrize('name', ['dath_n_16', 'admth_cnnf_16'])
def test_jit_trace_with_grad_traces_and_trains(name):
    """torch.jit.trace's defaults (grad on, sanity check re-run without grad): the fc6 tap-sum cache and the LRN's
    autograd Function made the graphs differ, and the traced LRN's in-place ops had no backward."""
    model = timm.create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    traced = torch.jit.trace(model, x)
    out = traced(x)
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert model.head.mlps[0].fc6.weight.grad is not None


def test_bits_at_creation_build_those_lengths():
    """timm passes the registry's num_classes (the name's width); bits= alone was read as one code of it."""
    assert timm.create_model('dath_n_32', bits=(16, 32)).bits == (16, 32)
    assert timm.create_model('dath_n_32', bits=64).bits == (64,)
    admth = timm.create_model('admth_cnnf_multi', bits=(32, 64))
    assert admth.bits == (32, 64) and len(admth.head.mlps) == 2  # one branch per length (one 160-bit code before)
    assert timm.create_model('dath_n_32', num_classes=8).bits == (8,)  # timm's width knob alone: one code of it
    assert timm.create_model('dath_n_32', bits=(8,), num_classes=8).bits == (8,)
    for name in ('dath_n_32', 'admth_cnnf_multi', 'dmlh_cnnf_16'):  # both, disagreeing: bits was dropped silently
        with pytest.raises(ValueError, match=r'bits=\(64,\) makes codes 64 bits wide in all, but num_classes=8'):
            timm.create_model(name, bits=(64,), num_classes=8)


def test_bits_asked_of_a_checkpoint_build_those_lengths_by_every_route(tmp_path):
    """timm sets num_classes from a local-dir:/hf-hub: config.json: bits= asking for other lengths built the
    checkpoint's instead, by this route only (the named route built them). Now the caller's bits win, as timm's
    num_classes= does: the trunk loads, the hash layer is fresh."""
    from deephash_zoo.hub.checkpoint import save_checkpoint

    saved = timm.create_model('dath_n_32')
    folder = save_checkpoint(saved, tmp_path / 'ckpt', card=False)
    assert timm.create_model(f'local-dir:{folder}', pretrained=True, bits=(32,)).bits == (32,)
    wider = timm.create_model(f'local-dir:{folder}', pretrained=True, bits=(16, 64))
    assert wider.bits == (16, 64) and torch.equal(wider.streams[0].features[0].weight,
                                                  saved.streams[0].features[0].weight)
    assert timm.create_model(f'local-dir:{folder}', pretrained=True, num_classes=8).bits == (8,)
    with pytest.raises(ValueError, match=r'bits=\(64,\) makes codes 64 bits wide in all, but num_classes=8'):
        timm.create_model(f'local-dir:{folder}', pretrained=True, bits=(64,), num_classes=8)


def test_two_stream_features_only_needs_the_getter():
    for feature_cls in ('hook', 'fx'):  # they read one module: stream 0's maps, while feature_info said both
        with pytest.raises(ValueError, match="would give stream 0's maps alone"):
            timm.create_model('dath_alexnet_16', features_only=True, feature_cls=feature_cls)
    both = timm.create_model('dath_alexnet_16', features_only=True).eval()
    assert [t.shape[1] for t in both(torch.randn(2, 3, 64, 64))] == both.feature_info.channels() == [128, 384, 512, 512]
    assert timm.create_model('dath_n_16', features_only=True, feature_cls='hook').feature_info.channels()[0] == 64


def test_hash_model_reset_classifier_takes_global_pool(tmp_path):
    from deephash_zoo.hub.checkpoint import load_checkpoint, save_checkpoint

    model = deephash_zoo.hash_model('resnet18', bits=32).eval()
    x = torch.randn(2, 3, 64, 64)
    model.reset_classifier(32, 'catavgmax')  # avg and max side by side: the hash layer reads twice the width
    assert model.hash.fc[0].in_features == 2 * model.num_features and model(x).shape == (2, 32)
    save_checkpoint(model, tmp_path / 'ckpt')  # the checkpoint rebuilds the backbone with that pool
    assert torch.equal(load_checkpoint(tmp_path / 'ckpt')(x), model(x))
    model.reset_classifier(0, '')  # timm's unpooled features, as on the backbone alone (it ignored the pool)
    assert model(x).shape == (2, model.num_features, 2, 2)
    with pytest.raises(ValueError, match='needs a pooled vector'):
        model.reset_classifier(32, '')
    with pytest.raises(ValueError, match="global_pool 'bogus' is not one this backbone takes"):
        model.reset_classifier(32, 'bogus')


def _overflowing_map() -> torch.Tensor:
    """Activations up to 40 on a 13x13 map: a channel energy reaches ~9.5e4, past fp16's 65,504."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 32, 13, 13, generator=generator) * 40


@pytest.mark.parametrize('kind', ['position', 'channel', 'dual'])
def test_attention_energies_stay_finite_in_fp16(kind):
    from deephash_zoo.models.attention import create_attention

    module = create_attention(kind, 32).eval()
    for parameter in module.parameters():
        torch.nn.init.normal_(parameter, std=0.05) if parameter.dim() > 1 else parameter.data.fill_(0.5)
    x = _overflowing_map()
    a = x.flatten(2).half()
    assert torch.isinf(torch.bmm(a, a.transpose(1, 2))).any(), 'the input must overflow an fp16 energy'
    with torch.no_grad():
        expected = module(x)
        in_half = module.half()(x.half())
    assert in_half.dtype == torch.float16
    assert torch.isfinite(in_half).all()
    torch.testing.assert_close(in_half.float(), expected, rtol=2e-2, atol=0.5)


def test_channel_attention_energy_is_fp32_under_fp16_autocast():
    from deephash_zoo.models.attention import ChannelAttention

    module = ChannelAttention(32).eval()
    x = _overflowing_map()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.float16):
        out = module(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        torch.testing.assert_close(out.float(), module(x), rtol=1e-2, atol=0.5)


@pytest.mark.parametrize('kind', ['position', 'channel', 'dual'])
def test_attention_traces_with_fx_and_runs_on_meta(kind):
    """The fp32-energy guard must not read autocast state from an FX proxy or a device without autocast.

    timm's suite traces every model (feature extraction) and builds some on the meta device; both
    failed when the guard asked ``torch.is_autocast_enabled`` about a proxy or ``'meta'``.
    """
    from torch.fx import symbolic_trace

    from deephash_zoo.models.attention import create_attention

    module = create_attention(kind, 32).eval()
    for parameter in module.parameters():
        parameter.data.normal_(std=0.05)
    x = _overflowing_map()
    traced = symbolic_trace(module)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), module(x))
    on_meta = create_attention(kind, 32, device='meta')
    assert on_meta(x.to('meta')).shape == x.shape


def test_encode_refuses_a_numpy_array_and_names_a_string_length(images):
    """A numpy array gets the contract's one-line ValueError (not an AttributeError from ``.dim()``), and a
    length given as a string says so: ``bits=32`` in the message would read as valid."""
    model = timm.create_model('dath_n_16')
    with pytest.raises(ValueError, match=r'expects a torch\.Tensor .* got numpy\.ndarray; convert with '
                                         r'torch\.from_numpy'):
        model.encode(images.numpy())
    with pytest.raises(ValueError, match=r"code lengths \(16,\); got bits='16' \(a str\)"):
        model.encode(images, bits='16')
    for bits, kind in ((16.0, 'float'), (True, 'bool')):  # 16.0 == 16 passed as a length
        with pytest.raises(ValueError, match=rf'got bits={bits!r} \(a {kind}\)'):
            model.encode(images, bits=bits)


def test_broken_weights_and_label_counts_are_named(images):
    model = timm.create_model('dath_n_16').eval()
    with torch.no_grad():
        model.head.hash.fc[0].weight.fill_(float('nan'))
    with pytest.raises(ValueError, match='the model gave NaN codes for finite images'):
        model.encode(images)  # NaN >= 0 is False: every bit read -1, with no word
    for count in (-3, 2.5, True):
        with pytest.raises(ValueError, match=f'num_labels must be an integer >= 0 .*got {count!r}'):
            timm.create_model('dath_n_16', num_labels=count)  # torch's "negative dimension" error before
    with pytest.raises(ValueError, match='num_labels must be an integer >= 0'):
        deephash_zoo.hash_model('test_resnet', bits=16, num_labels=-1)
    assert timm.create_model('dath_n_16', num_labels=np.int64(3)).num_labels == 3


def test_encode_from_two_threads_leaves_a_training_model_as_it_was():
    """encode switched a shared training model to eval and back with no lock: two threads left it in eval mode
    (every run here) or ran a forward in train mode, updating BatchNorm's statistics."""
    import threading

    model = deephash_zoo.hash_model('resnet18', bits=32).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    x = torch.randn(2, 3, 64, 64)
    alone = model.encode(x)

    def work(out):
        out.extend(bool(torch.equal(model.encode(x), alone)) for _ in range(15))

    results = [[], []]
    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert model.training and all(results[0] + results[1]) and len(results[0] + results[1]) == 30
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_packed_codes_of_no_images():
    model = timm.create_model('admth_cnnf_multi').eval()
    assert model.encode(torch.zeros(0, 3, 64, 64), bits=32, packed=True).shape == (0, 4)
    assert deephash_zoo.pack_signs(torch.ones(0, 12)).shape == (0, 2)


def test_a_dtype_round_trip_drops_fc6s_cached_tap_sums():
    """m.half(); m.float() made new fp32 weights that could take the old address with version 0: the no-grad path
    then served tap sums of the fp16-rounded weights (1.3e-3 off the grad path, in one run of two)."""
    model = timm.create_model('dath_n_32').eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    mlp = model.head.mlps[0]
    assert mlp._fc6_sums is not None
    model.half()
    model.float()
    assert mlp._fc6_sums is None
    with torch.no_grad():
        cached = model(x)  # the tap sums of the fp32 weights, made again
    torch.testing.assert_close(cached, model(x).detach(), rtol=0, atol=1e-4)  # the grad path: every tap
