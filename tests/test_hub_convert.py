"""ImageNet initialisation from the real file formats, written small here: torchvision's AlexNet state dict
(torch.save) and MatConvNet's CNN-F (scipy.io.savemat in MatConvNet's structure, real shapes). Every tensor
is checked by what it computes: our layer on the normalised input equals the reference layer on its own
input (torchvision's module; for MatConvNet a direct numpy convolution of the H x W x Cin x Cout filters on
raw 0..255 pixels minus the average image)."""
import hashlib

import numpy as np
import pytest
import timm
import torch
import torchvision
from numpy.lib.stride_tricks import sliding_window_view

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.convert import main as convert_main
from deephash_zoo.hub.convert import convert_matconvnet_vggf, convert_torchvision_alexnet, read_vggf_mat
from deephash_zoo.training.trainer import _load_init

scipy_io = pytest.importorskip('scipy.io')

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
AVERAGE = np.array([122.80, 114.75, 101.64])  # MatConvNet's CNN-F mean pixel (0..255)
# CNN-F as MatConvNet's imagenet-vgg-f.mat has it: (name, H, W, Cin, Cout, stride, pad)
CNNF = [('conv1', 11, 11, 3, 64, 4, 0), ('conv2', 5, 5, 64, 256, 1, 2), ('conv3', 3, 3, 256, 256, 1, 1),
        ('conv4', 3, 3, 256, 256, 1, 1), ('conv5', 3, 3, 256, 256, 1, 1), ('fc6', 6, 6, 256, 4096, 1, 0),
        ('fc7', 1, 1, 4096, 4096, 1, 0), ('fc8', 1, 1, 4096, 1000, 1, 0)]
OUR_CONVS = (0, 4, 8, 10, 12)


# ------------------------------------------------------------------------------------------- torchvision
@pytest.fixture(scope='module')
def alexnet(module_tmp):
    """A torchvision AlexNet with random weights, saved as torchvision publishes it (a state dict)."""
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    path = module_tmp.mktemp('tv') / 'alexnet-owt-test.pth'
    torch.save(tv.state_dict(), path)
    return tv, path


def test_torchvision_alexnet_into_both_dath_streams(alexnet, tmp_path, capsys):
    tv, pth = alexnet
    out = tmp_path / 'init.safetensors'
    assert run_main(convert_main, ['--torchvision-alexnet', str(pth), '--model', 'dath_alexnet_16',
                                   '--out', str(out)]) == 0
    assert '28 tensors' in capsys.readouterr().out
    model = timm.create_model('dath_alexnet_16').eval()
    messages = []
    _load_init(model, str(out), messages.append)  # what deephash-train --init does
    assert messages == [f'initialised 28/{len(model.state_dict())} tensors from {out}']
    # the same conversion, the same bytes: safetensors wrote the metadata in a random order each time
    again = tmp_path / 'again.safetensors'
    digests = set()
    for _ in range(4):
        assert run_main(convert_main, ['--torchvision-alexnet', str(pth), '--model', 'dath_alexnet_16',
                                       '--out', str(again)]) == 0
        digests.add(hashlib.sha256(again.read_bytes()).hexdigest())
    assert digests == {hashlib.sha256(out.read_bytes()).hexdigest()}
    capsys.readouterr()

    x = torch.randn(2, 3, 64, 64)
    pool5 = torch.randn(2, 256, 6, 6)
    fc6_out = torch.randn(2, 4096)
    with torch.no_grad():
        ref_conv5, ref_pool5 = tv.features[:12](x), tv.features(x)
        ref_fc6 = tv.classifier[1](torch.flatten(pool5, 1))
        ref_fc7 = tv.classifier[4](fc6_out)
        for stream in model.streams:  # position- and channel-attention streams (attention starts as identity)
            torch.testing.assert_close(stream.features(x), ref_conv5, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(stream(x), ref_pool5, rtol=1e-5, atol=1e-6)
        for mlp in model.head.mlps:
            # a 6x6 convolution and a Linear over the flattened map sum in another order: float32 rounding only
            torch.testing.assert_close(mlp.fc6(pool5).flatten(1), ref_fc6, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(mlp.fc7(fc6_out[:, :, None, None]).flatten(1), ref_fc7, rtol=1e-4, atol=1e-5)
        # the whole chain at 224x224: fc7 + fc7' of two identical streams is twice torchvision's fc7
        big = torch.randn(1, 3, 224, 224)
        ref = tv.classifier[:6](torch.flatten(tv.avgpool(tv.features(big)), 1))
        ours = model.forward_head(model.forward_features(big), pre_logits=True)
    torch.testing.assert_close(ours, 2 * ref, rtol=1e-4, atol=1e-6)


def test_torchvision_refusals(alexnet, tmp_path):
    tv, pth = alexnet
    with pytest.raises(ValueError, match=r'torchvision AlexNet weights are alexnet; admth_cnnf_16 has a cnnf trunk\. '
                                         r'Expected a dath_\* \(AlexNet trunks\) model'):
        convert_torchvision_alexnet(pth, 'admth_cnnf_16')
    state = dict(tv.state_dict())
    state['classifier.1.weight'] = state['classifier.1.weight'][:, :4096]
    with pytest.raises(ValueError, match=r'classifier\.1\.weight has shape \(4096, 4096\); expected \(4096, 9216\)'):
        convert_torchvision_alexnet(state, 'dath_n_16')
    del state['features.3.weight']
    with pytest.raises(ValueError, match=r"missing 'features\.3\.weight'; expected torchvision AlexNet keys"):
        convert_torchvision_alexnet(state, 'dath_n_16')
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'this is not a torch file')
    with pytest.raises(ValueError, match=r'bad\.pth: not a readable PyTorch state dict'):
        convert_torchvision_alexnet(bad, 'dath_n_16')
    with pytest.raises(FileNotFoundError, match=r'nothing\.pth: not found; .*download\.pytorch\.org'):
        convert_torchvision_alexnet(tmp_path / 'nothing.pth', 'dath_n_16')


def test_download_when_missing(alexnet, tmp_path, monkeypatch):
    """--download fetches the published file through torch.hub (replaced here: no network) with its hash prefix."""
    import shutil

    from deephash_zoo.hub.convert import SOURCE_URLS, convert_file

    _, pth = alexnet
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        shutil.copyfile(pth, dst)

    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    target = tmp_path / 'weights' / 'alexnet-owt-7be5be79.pth'
    report = convert_file('torchvision-alexnet', target, 'dath_n_16', tmp_path / 'init.safetensors', download=True)
    assert fetched == [(SOURCE_URLS['torchvision-alexnet'], '7be5be79')] and target.is_file()
    assert report.metadata()['source_file'] == 'alexnet-owt-7be5be79.pth'

    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError('<urlopen error [Errno -3] Temporary failure in name resolution>')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(FileNotFoundError, match=r'vgg-f\.mat: could not download https://www\.vlfeat\.org/'):
        convert_file('matconvnet-vggf', tmp_path / 'vgg-f.mat', 'admth_cnnf_16', tmp_path / 'x.safetensors',
                     download=True)
    with pytest.raises(ValueError, match=r'x\.pt: the output must be a \.safetensors file'):
        convert_file('torchvision-alexnet', target, 'dath_n_16', tmp_path / 'x.pt')


# ------------------------------------------------------------------------------------------- MatConvNet
def _conv_layer(name, h, w, cin, cout, stride, pad, rng):
    weights = np.empty((1, 2), dtype=object)  # MatConvNet: weights = {filter, bias}, a 1x2 cell
    weights[0, 0] = (rng.standard_normal((h, w, cin, cout), dtype=np.float32) * 0.01)
    weights[0, 1] = (rng.standard_normal((cout, 1), dtype=np.float32) * 0.1)
    return dict(name=name, type='conv', weights=weights, size=np.array([h, w, cin, cout], float),
                stride=np.array([stride, stride], float), pad=np.array([pad] * 4, float))


def _write_mat(path, convs, average, wrap_net=False):
    rng = np.random.default_rng(0)
    layers = []
    for spec in convs:
        layers.append(_conv_layer(*spec, rng))
        layers.append(dict(name='relu' + spec[0][-1], type='relu'))
        if spec[0] in ('conv1', 'conv2'):
            layers.append(dict(name='norm' + spec[0][-1], type='lrn', param=np.array([5, 1, 2e-5, 0.75])))
            layers.append(dict(name='pool' + spec[0][-1], type='pool', method='max', pool=np.array([3., 3.]),
                               stride=np.array([2., 2.]), pad=np.array([0., 1., 0., 1.] if spec[0] == 'conv1' else 0.)))
    layers.append(dict(name='prob', type='softmax'))
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    meta = dict(normalization=dict(averageImage=average, imageSize=np.array([224., 224., 3.]),
                                   interpolation='bilinear', keepAspect=1.0),
                classes=dict(name=np.array(['n01440764', 'n01443537'], dtype=object)))
    net = dict(layers=cell, meta=meta)
    scipy_io.savemat(str(path), dict(net=net) if wrap_net else net)
    return scipy_io.loadmat(str(path), squeeze_me=True, struct_as_record=False)  # the raw arrays, for references


def _np_conv(x_hwc, f_hwcn, bias, stride, pad):
    """Direct correlation as MatConvNet computes it, in its own layout: y[i,j,o] = b[o] + sum F[h,w,c,o] x[.,.,c]."""
    x = np.pad(x_hwc.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = f_hwcn.shape[:2]
    win = sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]  # (oh, ow, c, kh, kw)
    return np.einsum('ijchw,hwco->ijo', win, f_hwcn.astype(np.float64)) + np.asarray(bias, np.float64).reshape(-1)


@pytest.fixture(scope='module')
def vggf(module_tmp):
    path = module_tmp.mktemp('mcn') / 'imagenet-vgg-f.mat'
    raw = _write_mat(path, CNNF, AVERAGE.reshape(3, 1))
    convs = [layer for layer in raw['layers'] if layer.type == 'conv']
    return path, {layer.name: (layer.weights[0], layer.weights[1]) for layer in convs}


def test_matconvnet_cnnf_with_folded_normalisation(vggf, tmp_path, capsys):
    path, ref = vggf
    out = tmp_path / 'cnnf.safetensors'
    assert run_main(convert_main, ['--matconvnet-vggf', str(path), '--model', 'admth_cnnf_16', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '14 tensors' in printed and 'conv1 folds the input conversion' in printed
    model = timm.create_model('admth_cnnf_16').eval()
    _load_init(model, str(out), lambda m: None)
    convs = [model.trunk.features[i] for i in OUR_CONVS]
    rng = np.random.default_rng(1)

    # conv1: MatConvNet on raw pixels minus the average image == ours on the timm-normalised image
    raw = rng.uniform(0, 255, size=(67, 67, 3))
    want = _np_conv(raw - AVERAGE, *ref['conv1'], stride=4, pad=0)
    x = torch.from_numpy(((raw / 255 - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        got = convs[0](x)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)

    # conv2..conv5 on a random map, in each one's own layout
    for (name, _, _, cin, _, stride, pad), conv in zip(CNNF[1:5], convs[1:], strict=True):
        fmap = rng.standard_normal((9, 9, cin))
        want = _np_conv(fmap, *ref[name], stride=stride, pad=pad)
        with torch.no_grad():
            got = conv(torch.from_numpy(fmap.transpose(2, 0, 1)[None].astype(np.float32)))[0].numpy()
        np.testing.assert_allclose(got.transpose(1, 2, 0), want, rtol=1e-4, atol=1e-5, err_msg=name)

    # fc6 over pool5 (6 x 6 x 256) and fc7, as MatConvNet's 6x6x256x4096 / 1x1x4096x4096 filters compute them
    pool5 = rng.standard_normal((6, 6, 256))
    f6, b6 = ref['fc6']
    want6 = np.einsum('hwc,hwco->o', pool5, f6.astype(np.float64)) + b6
    v = rng.standard_normal(4096)
    f7, b7 = ref['fc7']
    want7 = v @ f7.reshape(4096, 4096).astype(np.float64) + b7  # squeeze_me dropped fc7's 1x1
    mlp = model.head.mlps[0]
    with torch.no_grad():
        got6 = mlp.fc6(torch.from_numpy(pool5.transpose(2, 0, 1)[None].astype(np.float32))).flatten().numpy()
        got7 = mlp.fc7(torch.from_numpy(v.astype(np.float32))[None, :, None, None]).flatten().numpy()
    np.testing.assert_allclose(got6, want6, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got7, want7, rtol=1e-4, atol=1e-5)


def test_every_branch_and_refusals(vggf):
    path, _ = vggf
    report = convert_matconvnet_vggf(path, 'dmlh_cnnf_multi')  # four branches, each with fc6 and fc7
    for i in range(4):
        assert report.mapping[f'head.mlps.{i}.fc6.weight'] == 'fc6.weight'
        assert torch.equal(report.tensors[f'head.mlps.{i}.fc7.bias'], report.tensors['head.mlps.0.fc7.bias'])
    assert report.mapping['trunk.features.12.weight'] == 'conv5.weight'
    with pytest.raises(ValueError, match=r'MatConvNet CNN-F weights are cnnf; dath_n_16 has a alexnet trunk'):
        convert_matconvnet_vggf(path, 'dath_n_16')


def test_matconvnet_parsing_variants(tmp_path):
    """Older files (filters/biases fields, per-pixel averageImage), a top-level ``net``, wrong shapes."""
    per_pixel = np.random.default_rng(2).uniform(90, 130, size=(224, 224, 3))
    path = tmp_path / 'small.mat'
    _write_mat(path, CNNF[:2], per_pixel, wrap_net=True)
    convs, average = read_vggf_mat(path)
    assert [c.name for c in convs] == ['conv1', 'conv2'] and convs[0].filter.shape == (11, 11, 3, 64)
    np.testing.assert_allclose(average, per_pixel.reshape(-1, 3).mean(axis=0))
    old = dict(layers=np.empty((1, 1), dtype=object), normalization=dict(averageImage=AVERAGE))
    old['layers'][0, 0] = dict(name='conv1', type='conv', filters=np.ones((11, 11, 3, 64), np.float32),
                               biases=np.zeros((1, 64), np.float32), stride=4.0, pad=0.0)
    scipy_io.savemat(str(tmp_path / 'old.mat'), old)
    (conv,), average = read_vggf_mat(tmp_path / 'old.mat')
    assert conv.filter.shape == (11, 11, 3, 64) and conv.bias.size == 64
    np.testing.assert_allclose(average, AVERAGE)
    vggm = [('conv1', 7, 7, 3, 96, 2, 0)] + CNNF[1:2]  # VGG-M's conv1 is not CNN-F's
    _write_mat(tmp_path / 'vggm.mat', vggm + [(n, 1, 1, 2, 2, 1, 0) for n in ('c3', 'c4', 'c5', 'f6', 'f7')], AVERAGE)
    with pytest.raises(ValueError, match=r"vggm\.mat: layer conv1 has stride \[2\.0, 2\.0\], pad \[0\.0, 0\.0, 0\.0, "
                                         r"0\.0\]; CNN-F's conv1 has stride 4, pad 0"):
        convert_matconvnet_vggf(tmp_path / 'vggm.mat', 'admth_cnnf_16')
    (tmp_path / 'junk.mat').write_bytes(b'MATLAB 5.0 MAT-file, but not really' + b'\x00' * 100)
    with pytest.raises(ValueError, match=r'junk\.mat: not a readable MATLAB \.mat file'):
        read_vggf_mat(tmp_path / 'junk.mat')


@pytest.mark.parametrize('payload', ['pickle', 'random'])
def test_an_unreadable_pth_is_named_without_the_unsafe_advice(tmp_path, capsys, payload):
    """torch's own message advises ``weights_only=False`` (running the file's code): the one line says the file
    is not a readable state dict instead, and never passes that advice on."""
    import fractions

    bad = tmp_path / 'bad.pth'
    if payload == 'pickle':
        torch.save({'w': fractions.Fraction(1, 3)}, bad)  # a pickle holding more than tensors
    else:
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    code = run_main(convert_main, ['--torchvision-alexnet', str(bad), '--model', 'dath_n_16',
                                   '--out', str(tmp_path / 'out.safetensors')])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, err
    assert 'bad.pth: not a readable PyTorch state dict' in err and 'weights_only' not in err, err
    assert not (tmp_path / 'out.safetensors').exists()
