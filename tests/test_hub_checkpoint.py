"""Checkpoint folders: timm's Hub layout with a card, safetensors only, and one clear error per bad input."""
import ast
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.hub.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint

PACKAGE = Path(deephash_zoo.__file__).parent
IMG = 64


@pytest.fixture(scope='module')
def saved(module_tmp):
    """A dath_n_16 checkpoint with DATH's label classifier (10 labels), and the model it came from."""
    torch.manual_seed(0)
    model = timm.create_model('dath_n_16', num_labels=10).eval()
    path = save_checkpoint(model, module_tmp.mktemp('ckpt') / 'checkpoint', dataset='fashion-mnist',
                           training=dict(epochs=1, img_size=IMG, seed=0, lr=1e-5, out='/home/someone/runs/x'))
    return path, model


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_layout_config_and_card(saved):
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    assert not [p for p in path.parent.iterdir() if p.name.startswith('.')]  # no temporary sibling left
    config = json.loads((path / 'config.json').read_text())
    assert config['architecture'] == 'dath_n_16' and config['num_classes'] == 16
    assert config['bits'] == [16] and config['num_labels'] == 10 and config['dataset'] == 'fashion-mnist'
    assert config['training']['img_size'] == IMG
    assert config['pretrained_cfg']['mean'] == list(model.pretrained_cfg['mean'])
    assert config['pretrained_cfg']['input_size'] == [3, IMG, IMG]  # the size it was trained at, not 224
    assert 'num_labels' not in config.get('model_args', {})  # the inference model only
    card = (path / 'README.md').read_text()
    assert card.startswith('---\n') and 'library_name: timm' in card and 'model-index' not in card
    assert (path / 'model.safetensors').stat().st_mode & 0o777 == (path / 'config.json').stat().st_mode & 0o777
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(path)(x), model(x))


def test_a_loaded_checkpoint_says_the_size_it_was_trained_at(saved):
    """resolve_data_config on a model from load_checkpoint gives the recorded 64x64, not the architecture's 224,
    as timm's local-dir: does; a fresh model of the same name still says 224."""
    from timm.data import resolve_data_config

    path, _ = saved
    loaded = load_checkpoint(path)
    assert loaded.pretrained_cfg['input_size'] == (3, IMG, IMG) and loaded.default_cfg is loaded.pretrained_cfg
    assert resolve_data_config(model=loaded)['input_size'] == (3, IMG, IMG)
    assert resolve_data_config(model=timm.create_model(f'local-dir:{path}', pretrained=True))['input_size'] == \
        (3, IMG, IMG)
    assert loaded.pretrained_cfg['mean'] == tuple(timm.create_model('dath_n_16').pretrained_cfg['mean'])
    assert timm.create_model('dath_n_16').pretrained_cfg['input_size'] == (3, 224, 224)


def test_admth_round_trip(tmp_path):
    """ADMTH has no label classifier: loading must not hand it num_labels."""
    torch.manual_seed(1)
    model = timm.create_model('admth_cnnf_16').eval()
    path = save_checkpoint(model, tmp_path / 'ckpt', dataset='mosaic', card=False)
    assert sorted(p.name for p in path.iterdir()) == ['config.json', 'model.safetensors']
    x = torch.randn(1, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(path)(x), model(x))


def test_loading_draws_no_random_weights_and_leaves_the_seeded_stream_alone(saved):
    """The model is built on the meta device and takes the file's tensors: no random weights are drawn to be
    overwritten, so a user's seeded random stream goes on as if nothing had been loaded."""
    path, model = saved
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    loaded = load_checkpoint(path)
    assert torch.equal(torch.rand(4), expected)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(t.requires_grad for t in loaded.parameters())  # as a model built the ordinary way
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(loaded(x), model(x))


def test_loaded_weights_do_not_change_when_the_file_is_rewritten_in_place(saved, tmp_path):
    """The weights are read, not mapped: a server's model stays as loaded when its file is overwritten in place
    (``cp`` over it), and does not fault when the file shrinks."""
    path, _ = saved
    folder = _copy(path, tmp_path / 'ckpt')
    loaded = load_checkpoint(folder)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    weights = folder / 'model.safetensors'
    size = weights.stat().st_size
    with open(weights, 'r+b') as f:  # the same file (inode): its tensor bytes rewritten, then cut short
        f.seek(size // 2)
        f.write(b'\x7f' * (size - size // 2))
        f.flush()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
        f.truncate(size // 2)  # a mapped file's pages past the end would now be SIGBUS
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())


def test_a_half_precision_checkpoint_loads_in_the_models_dtype(tmp_path):
    """Weights saved in fp16 load into the fp32 model, as copying them into it always did."""
    torch.manual_seed(2)
    model = timm.create_model('dath_n_16').eval()
    path = save_checkpoint(model.half(), tmp_path / 'ckpt', card=False)
    loaded = load_checkpoint(path)
    assert {t.dtype for t in loaded.state_dict().values()} == {torch.float32}
    assert all(torch.equal(loaded.state_dict()[k], v.float()) for k, v in model.state_dict().items())


def test_a_backbone_with_tensors_outside_its_state_dict_is_built_with_them(tmp_path):
    """timm's relative-position ViT keeps its position index in non-persistent buffers, which no file holds:
    such an architecture is built the ordinary way, and its codes equal the saved model's."""
    from deephash_zoo.hub.checkpoint import _model_without_weights

    torch.manual_seed(4)
    model = deephash_zoo.hash_model('test_vit_relpos', bits=16).eval()
    path = save_checkpoint(model, tmp_path / 'ckpt', card=False)
    assert not any(t.is_meta for t in _model_without_weights('hash_backbone', backbone='test_vit_relpos',
                                                              bits=[16]).buffers())
    x = torch.randn(2, 3, *model.pretrained_cfg['input_size'][1:])
    assert torch.equal(load_checkpoint(path)(x), model(x))


def test_an_architecture_that_cannot_be_built_on_meta_loads_as_before(saved, monkeypatch):
    """Where building on the meta device fails (a constructor that reads tensor values), the model is built on
    the CPU with its own initial values and loads the same weights."""
    from deephash_zoo.hub import checkpoint

    path, model = saved
    real = timm.create_model

    def no_meta(name, *args, **kwargs):
        if kwargs.get('device') == 'meta':
            raise RuntimeError('Tensor.item() cannot be called on meta tensors')
        return real(name, *args, **kwargs)

    monkeypatch.setattr(checkpoint.timm, 'create_model', no_meta)
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(path)(x), model(x))


# ------------------------------------------------------------------------------------------- bad input
def test_truncated_and_corrupt_weights(saved, tmp_path):
    path, _ = saved
    bad = _copy(path, tmp_path / 'truncated')
    data = (bad / 'model.safetensors').read_bytes()
    (bad / 'model.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r'truncated/model\.safetensors: corrupt or truncated safetensors'):
        load_checkpoint(bad)
    (bad / 'model.safetensors').write_bytes(b'\x00' * 64)
    with pytest.raises(ValueError, match=r'model\.safetensors: corrupt or truncated'):
        load_checkpoint(bad)


def test_weights_of_another_architecture_or_length(saved, tmp_path):
    path, _ = saved
    other = save_checkpoint(timm.create_model('admth_cnnf_16'), tmp_path / 'admth', card=False)
    wrong_arch = _copy(path, tmp_path / 'wrong_arch')
    shutil.copyfile(other / 'model.safetensors', wrong_arch / 'model.safetensors')
    with pytest.raises(ValueError, match=r"wrong_arch/model\.safetensors: weights do not fit dath_n_16 with bits "
                                         r"\(16,\) \(missing: .*the file holds \['head', 'trunk'\], dath_n_16 "
                                         r"expects \['head', 'streams'\]"):
        load_checkpoint(wrong_arch)
    wrong_bits = _copy(path, tmp_path / 'wrong_bits')
    config = json.loads((wrong_bits / 'config.json').read_text())
    config.update(bits=[32], num_classes=32)
    (wrong_bits / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'weights do not fit dath_n_16 with bits \(32,\) \(shape mismatch: '
                                         r"\['head\.hash\.fc\.0\.weight'"):
        load_checkpoint(wrong_bits)


@pytest.mark.parametrize('edit, message', [
    # without "bits" they come from the architecture and num_classes (timm's save_for_hf); without both, missing
    (lambda c: (c.pop('bits'), c.pop('num_classes')),
     r"missing keys \['num_classes', 'bits'\]; expected \['architecture', 'num_classes', "),
    (lambda c: c.pop('architecture'), r"missing keys \['architecture'\]"),
    (lambda c: c.update(bits=[16, -8]), r'"bits" must be a non-empty list of positive code lengths'),
    (lambda c: c.update(num_classes=12), r'"num_classes" 12 is not the sum of "bits" \[16\] \(16\)'),
    (lambda c: c.update(architecture='dath_n_17'), r"\"architecture\" 'dath_n_17' is not a registered model"),
    (lambda c: c.update(pretrained_cfg=None), r'"pretrained_cfg" must be an object'),
])
def test_config_errors_name_the_file(saved, tmp_path, edit, message):
    path, _ = saved
    folder = tmp_path / 'c'
    folder.mkdir()
    config = json.loads((path / 'config.json').read_text())
    edit(config)
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'c/config\.json: ' + message):
        read_checkpoint_config(folder)


def test_not_json_and_pickle_only_folders(saved, tmp_path):
    path, _ = saved
    folder = tmp_path / 'p'
    folder.mkdir()
    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(ValueError, match=r'p/config\.json: not valid JSON'):
        read_checkpoint_config(folder)
    shutil.copyfile(path / 'config.json', folder / 'config.json')
    (folder / 'pytorch_model.bin').write_bytes(b'not loaded')
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors: missing \(only safetensors weights are "
                                                r"loaded\); found \['pytorch_model\.bin'\], which are pickle"):
        load_checkpoint(folder)
    with pytest.raises(FileNotFoundError, match='neither a checkpoint folder'):
        load_checkpoint(tmp_path / 'nothing')


# ------------------------------------------------------------------------------------------- no pickle
_PICKLE_MODULES = {'pickle', 'cPickle', '_pickle', 'dill', 'joblib', 'cloudpickle', 'shelve', 'marshal'}


def _pickle_uses(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (f'import {a.name}' for a in node.names if a.name.split('.')[0] in _PICKLE_MODULES)
        elif isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] in _PICKLE_MODULES:
            yield f'from {node.module} import ...'
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            if func in ('torch.load', 'load') or func.endswith('.torch.load'):
                weights_only = kw.get('weights_only')
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    yield f'{ast.unparse(node)} (without weights_only=True)'
            if func.split('.')[-1] in ('loads', 'load') and func.split('.')[0] in _PICKLE_MODULES:
                yield ast.unparse(node)
            allow = kw.get('allow_pickle')
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                yield f'{ast.unparse(node)} (allow_pickle)'


def test_no_pickle_anywhere_in_the_package():
    """Weights are safetensors only: no module imports pickle, and torch.load always has weights_only=True."""
    sources = sorted(PACKAGE.rglob('*.py'))
    assert len(sources) > 20
    found = []
    for src in sources:
        text = src.read_text()
        found += [f'{src.relative_to(PACKAGE)}: {use}' for use in _pickle_uses(ast.parse(text))]
        # and by plain text, for what the AST walk could miss (aliases, strings passed to exec)
        for line_no, line in enumerate(text.splitlines(), 1):
            code = line.split('#')[0]
            if 'torch.load(' in code and 'weights_only=True' not in code and '``' not in code:
                found.append(f'{src.relative_to(PACKAGE)}:{line_no}: {line.strip()}')
    assert not found, found
    probe = ast.parse('import pickle\nx = torch.load(p)\ny = np.load(p, allow_pickle=True)')  # the checker works
    assert list(_pickle_uses(probe)) == ['import pickle', 'torch.load(p) (without weights_only=True)',
                                         'np.load(p, allow_pickle=True) (allow_pickle)']


# ------------------------------------------------------------------------------ what timm users rely on
def test_published_weights_hold_the_inference_model_only(saved):
    """DATH's label classifier trains J2 and stays in the run's last/ state; the model keeps it for training."""
    from safetensors.torch import load_file

    path, model = saved
    assert not [k for k in load_file(str(path / 'model.safetensors')) if k.startswith('aux_classifier.')]
    assert model.aux_classifier is not None and model._model_args.get('num_labels') == 10  # restored after saving


def test_timm_routes_load_a_published_folder(saved):
    """create_model(local-dir:) with another num_classes, checkpoint_path=, timm's load_checkpoint and
    features_only=True: each works on a checkpoint folder as on any timm weights."""
    from timm.data import resolve_data_config
    from timm.models import load_checkpoint as timm_load_checkpoint

    path, model = saved
    x = torch.randn(2, 3, IMG, IMG)
    loaded = timm.create_model(f'local-dir:{path}', pretrained=True).eval()
    assert torch.equal(loaded(x), model(x))
    assert resolve_data_config(model=loaded)['input_size'] == (3, IMG, IMG)
    other = timm.create_model(f'local-dir:{path}', pretrained=True, num_classes=8).eval()
    assert other(x).shape == (2, 8)  # a fresh hash layer; the trunk keeps the weights
    assert torch.equal(other.streams[0].features[0].weight, model.streams[0].features[0].weight)
    weights = str(path / 'model.safetensors')
    by_path = timm.create_model('dath_n_16', checkpoint_path=weights).eval()
    assert torch.equal(by_path(x), model(x))
    fresh = timm.create_model('dath_n_16').eval()
    timm_load_checkpoint(fresh, weights)
    assert torch.equal(fresh(x), model(x))
    features = timm.create_model(f'local-dir:{path}', pretrained=True, features_only=True).eval()
    assert len(features(x)) == len(features.feature_info.channels())


def test_fine_tuning_from_a_checkpoint_with_a_label_classifier_or_other_channels(saved, tmp_path):
    """num_labels= on pretrained weights gets a fresh label classifier (refused before: the checkpoint holds none);
    in_chans= adapts every DATH stream's first convolution (stream 1's stayed at 3 channels and was refused)."""
    path, model = saved
    x = torch.randn(2, 3, IMG, IMG)
    labelled = timm.create_model(f'local-dir:{path}', pretrained=True, num_labels=5).eval()
    assert torch.equal(labelled(x), model(x)) and labelled.label_logits(labelled(x)).shape == (2, 5)
    assert labelled.aux_classifier.weight.device.type == 'cpu' and labelled.aux_classifier.weight.std() > 0.1
    two = save_checkpoint(timm.create_model('dath_alexnet_16').eval(), tmp_path / 'two', card=False)
    for chans in (1, 4):
        grey = timm.create_model(f'local-dir:{two}', pretrained=True, in_chans=chans).eval()
        assert [s.features[0].weight.shape[1] for s in grey.streams] == [chans, chans]
        assert grey(torch.randn(2, chans, IMG, IMG)).shape == (2, 16)


def test_a_multi_length_checkpoint_names_every_hash_layer_its_classifier(tmp_path, caplog):
    """timm drops the classifier's weights for another num_classes; the registry's cfg named the first hash layer
    alone, so the second length's was reported as unexpected keys."""
    path = save_checkpoint(timm.create_model('dath_n_32', bits=(16, 32)).eval(), tmp_path / 'two', card=False)
    assert read_checkpoint_config(path)['pretrained_cfg']['classifier'] == ['head.hash.fc.0', 'head.hash.fc.1']
    with caplog.at_level('WARNING'):
        assert timm.create_model(f'local-dir:{path}', pretrained=True, num_classes=8).bits == (8,)
    assert 'Unexpected keys' not in caplog.text


def test_pretrained_weights_are_loaded_into_a_model_built_on_meta(saved):
    """timm.create_model(..., pretrained=True) builds the model on the meta device and gives it copies of the
    loaded tensors: no random weights drawn to be overwritten (a seeded stream goes on as if nothing had been
    loaded), and device=, dtype= and an input convolution timm adapts (in_chans=1) come out as they did when the
    model was built with random weights first. A new head (num_classes=, above) is built the ordinary way."""
    path, model = saved
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    loaded = timm.create_model(f'local-dir:{path}', pretrained=True, device='cpu')
    assert torch.equal(torch.rand(4), expected)
    own = loaded.state_dict()  # the file's tensors (the model's label classifier is not published)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(t.requires_grad for t in loaded.parameters())
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(loaded.eval()(x), model(x))
    bf16 = timm.create_model(f'local-dir:{path}', pretrained=True, dtype=torch.bfloat16).state_dict()
    assert all(torch.equal(bf16[k], v.to(torch.bfloat16)) for k, v in own.items())
    gray = timm.create_model(f'local-dir:{path}', pretrained=True, in_chans=1).state_dict()
    conv = model.pretrained_cfg['first_conv'] + '.weight'
    assert torch.equal(gray[conv], own[conv].sum(dim=1, keepdim=True))  # timm's adaptation of the RGB filters
    assert all(torch.equal(gray[k], v) for k, v in own.items() if k != conv)


def test_pretrained_weights_are_copies_and_a_model_asked_for_on_meta_stays_there(saved, tmp_path):
    """The model built on meta to receive weights takes copies of what timm loaded, which maps the file: it keeps its
    weights when the folder's file is rewritten in place. A model the caller asks for on the meta device stays
    there, weights or not, as timm's own models do."""
    path, _ = saved
    folder = _copy(path, tmp_path / 'ckpt')
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    weights = folder / 'model.safetensors'
    size = weights.stat().st_size
    with open(weights, 'r+b') as f:  # the same file (inode), its tensor bytes rewritten
        f.seek(size // 2)
        f.write(b'\x7f' * (size - size // 2))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
    with pytest.warns(UserWarning, match='to a meta parameter in the current model, which is a no-op'):
        on_meta = timm.create_model(f'local-dir:{path}', pretrained=True, device='meta')
    assert all(t.is_meta for t in [*on_meta.parameters(), *on_meta.buffers()])


def test_older_checkpoints_with_the_label_classifier_still_load(saved, tmp_path):
    """Folders written before checkpoints dropped the label classifier hold aux_classifier.*: still accepted."""
    from safetensors.torch import load_file, save_file

    path, model = saved
    old = _copy(path, tmp_path / 'old')
    state = load_file(str(old / 'model.safetensors'))
    state.update({f'aux_classifier.{k}': v.contiguous() for k, v in model.aux_classifier.state_dict().items()})
    save_file(state, str(old / 'model.safetensors'), metadata={'format': 'pt'})
    x = torch.randn(1, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(old)(x), model(x))
    assert torch.equal(timm.create_model(f'local-dir:{old}', pretrained=True).eval()(x), model(x))


def test_preprocessing_squashes_without_crop(saved):
    """The README's preprocessing: a bilinear resize of the whole image to the input size, no crop, recorded in
    the checkpoint so a timm user's resolve_data_config + create_transform gives it too."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    path, _ = saved
    config = json.loads((path / 'config.json').read_text())
    assert config['pretrained_cfg']['crop_mode'] == 'squash' and config['pretrained_cfg']['crop_pct'] == 1.0
    model = timm.create_model(f'local-dir:{path}', pretrained=True)
    transform = create_transform(**resolve_data_config(model=model))
    wide = Image.new('RGB', (4 * IMG, IMG))
    wide.paste((255, 255, 255), (0, 0, IMG // 2, IMG))  # a white strip at the left edge: a crop would cut it off
    x = transform(wide)
    assert x.shape == (3, IMG, IMG)
    white = (1 - torch.tensor(model.pretrained_cfg['mean'])) / torch.tensor(model.pretrained_cfg['std'])
    assert torch.allclose(x[:, :, 0], white[:, None].expand(3, IMG), atol=1e-5)


def test_registered_tags_are_exactly_the_published_cards():
    """timm.list_pretrained lists what the zoo publishes: one card in hub_cards/ per model and tag."""
    cards = {p.name[:-len('.md')] for p in (PACKAGE.parent / 'hub_cards').glob('*.md')}
    registered = {n for pattern in ('dath*', 'admth*', 'dmlh*') for n in timm.list_pretrained(pattern)}
    assert registered == cards, (sorted(registered - cards), sorted(cards - registered))


def test_a_checkpoint_carries_the_tag_of_its_data(tmp_path):
    """Trained on Fashion-MNIST: tag fmnist and the fmnist repository; on data the zoo does not publish (the
    mosaics, whose tag was withdrawn, or a list file): no tag and no repository (not the architecture's default,
    which names other weights), and the folder still loads."""
    model = timm.create_model('dath_n_16')
    fmnist = json.loads((save_checkpoint(model, tmp_path / 'f', dataset='fashion-mnist', card=False)
                         / 'config.json').read_text())['pretrained_cfg']
    assert (fmnist['tag'], fmnist['hf_hub_id']) == ('fmnist', 'deephash-zoo/dath_n_16.fmnist')
    for data, folder in (('mosaic', 'm'), ('mosaic-pair', 'p'), ('list:/data/train.txt', 'o')):
        other = json.loads((save_checkpoint(model, tmp_path / folder, dataset=data, card=False)
                            / 'config.json').read_text())['pretrained_cfg']
        assert other.get('tag') is None and other.get('hf_hub_id') is None, data
        assert timm.create_model(f'local-dir:{tmp_path / folder}', pretrained=True) is not None


@pytest.mark.parametrize('name', ['dath_alexnet_16', 'admth_cnnf_multi'])
def test_a_folder_of_timms_own_save_for_hf_loads(tmp_path, name):
    """timm.models.save_for_hf writes no "bits": they come from the architecture (or model_args)."""
    from timm.models import save_for_hf

    torch.manual_seed(2)
    model = timm.create_model(name).eval()
    save_for_hf(model, str(tmp_path / 'timm'), safe_serialization=True)
    assert 'bits' not in json.loads((tmp_path / 'timm' / 'config.json').read_text())
    assert read_checkpoint_config(tmp_path / 'timm')['bits'] == list(model.bits)
    x = torch.randn(1, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(tmp_path / 'timm')(x), model(x))


def test_any_backbone_checkpoints_round_trip(tmp_path):
    """hash_model checkpoints name the generic entrypoint hash_backbone and its backbone: load_checkpoint,
    local-dir: and timm.create_model rebuild them; a local-dir: backbone is accepted as a name."""
    from timm.models import save_for_hf

    torch.manual_seed(3)
    model = deephash_zoo.hash_model('resnet18', bits=(16, 32)).eval()
    path = save_checkpoint(model, tmp_path / 'ckpt', dataset='fashion-mnist', training=dict(img_size=IMG),
                           card=False)
    config = json.loads((path / 'config.json').read_text())
    assert config['architecture'] == 'hash_backbone' and config['model_args']['backbone'] == 'resnet18'
    assert config['bits'] == [16, 32] and config['pretrained_cfg']['input_size'] == [3, IMG, IMG]
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(load_checkpoint(path)(x), model(x))
    assert torch.equal(timm.create_model(f'local-dir:{path}', pretrained=True).eval()(x), model(x))

    backbone = timm.create_model('resnet18', num_classes=0).eval()  # a backbone folder of timm's own layout
    save_for_hf(backbone, str(tmp_path / 'backbone'), safe_serialization=True)
    on_local = deephash_zoo.hash_model(f'local-dir:{tmp_path / "backbone"}', bits=16, pretrained=True).eval()
    assert torch.equal(on_local.backbone.conv1.weight, backbone.conv1.weight)
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet5O'"):
        deephash_zoo.hash_model('resnet5O')


def test_save_checkpoint_replaces_a_checkpoint_and_nothing_else(saved, tmp_path):
    path, model = saved
    users = tmp_path / 'photos'
    users.mkdir()
    (users / 'notes.txt').write_text('mine')
    plain = tmp_path / 'report.txt'
    plain.write_text('mine too')
    with pytest.raises(ValueError, match='holds other files and no checkpoint'):
        save_checkpoint(model, users, card=False)
    with pytest.raises(ValueError, match='a file is there, not a checkpoint folder'):
        save_checkpoint(model, plain, card=False)
    with pytest.raises(ValueError, match='a file stands where its folder'):
        save_checkpoint(model, plain / 'checkpoint', card=False)
    assert (users / 'notes.txt').read_text() == 'mine' and plain.read_text() == 'mine too'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['photos', 'report.txt']  # no temporaries left
    again = _copy(path, tmp_path / 'again')  # a checkpoint is replaced, as a run does every epoch
    assert save_checkpoint(model, again, card=False) == again
    headless = timm.create_model('dath_n_16')
    headless.reset_classifier(0)  # it used to save, as bits [], which load_checkpoint then refused
    for model, what in ((headless, 'DATH has no hash layer'), (timm.create_model('test_resnet'), 'not a hashing')):
        with pytest.raises(ValueError, match=what):
            save_checkpoint(model, tmp_path / 'none', card=False)
    assert not (tmp_path / 'none').exists()
