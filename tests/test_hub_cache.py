"""``pretrained=True`` through timm's own Hub path, offline: a checkpoint seeded into a Hugging Face cache
loads bit for bit by the model name, ``hf-hub:``, ``local-dir:`` and ``pretrained_cfg_overlay(file=...)``.

huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` once, when it is imported (its
``constants`` module), and this process imported it long ago; so the loading runs in a fresh Python
with the environment set, and nothing in timm or huggingface_hub is mocked.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.hub.cache import repo_cache_folder, seed_hf_cache
from deephash_zoo.hub.checkpoint import save_checkpoint

REPO_ID = 'deephash-zoo/dath_n_16.fmnist'  # dath_n_16's hf_hub_id: what pretrained=True asks the Hub for
ROOT = Path(__file__).resolve().parents[1]

_LOADER = r'''
import json, sys
import timm, torch
import deephash_zoo
from deephash_zoo.hub.cache import create_pretrained

ckpt, out = sys.argv[1], sys.argv[2]
x = torch.load(out + '/x.pt', weights_only=True)
names = {
    'pretrained': lambda: timm.create_model('dath_n_16', pretrained=True),
    'hf-hub': lambda: timm.create_model('hf-hub:deephash-zoo/dath_n_16.fmnist', pretrained=True),
    'local-dir': lambda: timm.create_model('local-dir:' + ckpt, pretrained=True),
    'file': lambda: timm.create_model('dath_n_16', pretrained=True,
                                      pretrained_cfg_overlay=dict(file=ckpt + '/model.safetensors')),
    'helper': lambda: create_pretrained('dath_n_16'),
}
codes = {}
for key, make in names.items():
    with torch.no_grad():
        codes[key] = make().eval()(x)
torch.save(codes, out + '/codes.pt')
errors = {}
for name in ('dath_n_32', 'hf-hub:nobody/not-a-repo'):
    try:
        create_pretrained(name)
    except FileNotFoundError as e:
        errors[name] = str(e)
import huggingface_hub.constants as c
json.dump(dict(errors=errors, offline=c.HF_HUB_OFFLINE, cache=c.HF_HUB_CACHE), open(out + '/report.json', 'w'))
'''


@pytest.fixture(scope='module')
def seeded(module_tmp):
    torch.manual_seed(0)
    model = timm.create_model('dath_n_16', num_labels=10).eval()
    root = module_tmp.mktemp('hub')
    ckpt = save_checkpoint(model, root / 'checkpoint', dataset='fashion-mnist', training=dict(img_size=64))
    cache = root / 'hf-cache'
    snapshot = seed_hf_cache(ckpt, REPO_ID, cache)
    return model, ckpt, cache, snapshot


def test_cache_layout(seeded):
    _, ckpt, cache, snapshot = seeded
    repo = cache / 'models--deephash-zoo--dath_n_16.fmnist'
    assert repo_cache_folder(REPO_ID, cache) == repo
    rev = (repo / 'refs' / 'main').read_text()
    assert len(rev) == 40 and snapshot == repo / 'snapshots' / rev
    assert sorted(p.name for p in snapshot.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    for f in snapshot.iterdir():  # relative links into blobs/, as huggingface_hub writes them
        assert f.is_symlink() and f.resolve().parent == (repo / 'blobs').resolve()
        assert f.read_bytes() == (ckpt / f.name).read_bytes()
    assert seed_hf_cache(ckpt, REPO_ID, cache) == snapshot  # same files, same revision
    with pytest.raises(ValueError, match="repo id 'dath_n_16': expected ORG/NAME"):
        seed_hf_cache(ckpt, 'dath_n_16', cache)


def test_huggingface_hub_reads_its_environment_at_import(monkeypatch, tmp_path):
    """Why the loading below runs in a subprocess: setting the variables now changes nothing."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path))
    assert constants.HF_HUB_CACHE != str(tmp_path)


def test_pretrained_loads_offline_through_timm(seeded, tmp_path):
    model, ckpt, cache, _ = seeded
    x = torch.randn(2, 3, 64, 64)
    torch.save(x, tmp_path / 'x.pt')
    with torch.no_grad():
        expected = model(x)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf-home'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop('HF_TOKEN', None)
    proc = subprocess.run([sys.executable, '-c', _LOADER, str(ckpt), str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['offline'] is True and report['cache'] == str(cache)
    codes = torch.load(tmp_path / 'codes.pt', weights_only=True)
    assert sorted(codes) == ['file', 'helper', 'hf-hub', 'local-dir', 'pretrained']
    for key, out in codes.items():
        assert torch.equal(out, expected), key
    # a repository that is not in the cache: one line naming it, the cache folder, and the way out
    msg = report['errors']['dath_n_32']
    assert msg.startswith('deephash-zoo/dath_n_32.fmnist: weights not found: offline (HF_HUB_OFFLINE=1)')
    assert f'{cache}/models--deephash-zoo--dath_n_32.fmnist/snapshots/<rev>/model.safetensors' in msg
    assert 'seed_hf_cache' in msg and 'local-dir:' in msg and '\n' not in msg
    assert report['errors']['hf-hub:nobody/not-a-repo'].startswith('nobody/not-a-repo: weights not found')


_USER_ENCODES = r'''
import json, sys
import numpy as np
import timm, torch
from timm.data import create_transform, resolve_data_config
import deephash_zoo
from deephash_zoo.evaluation import protocol_sets, score_codes

out = sys.argv[1]
model = timm.create_model('dath_n_16', pretrained=True).eval()  # from the seeded cache, offline
config = resolve_data_config(model=model)
transform = create_transform(**config)  # what a timm user does: no size given by hand
sets, _ = protocol_sets('fashion-mnist', None, 0, transform, 30, 90)
codes = {}
with torch.no_grad():
    for name, ds in sets.items():
        codes[name] = model.encode(torch.stack([ds[i][0] for i in range(len(ds))])).numpy()
result = score_codes(codes['query'], codes['database'], sets['query'].labels, sets['database'].labels, None, 16, 0)
tagged = timm.create_model('dath_n_16.fmnist', pretrained=True)  # the README's tagged name: 224 before
asked = timm.create_model('dath_n_16', pretrained=True, pretrained_cfg_overlay=dict(input_size=(3, 96, 96)))
sizes = {name: list(resolve_data_config(model=m)['input_size']) for name, m in (('tagged', tagged), ('asked', asked))}
json.dump(dict(input_size=list(config['input_size']), map=result['map'], **sizes), open(out + '/user.json', 'w'))
'''


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').is_dir() and not os.environ.get('FASHION_MNIST_DIR'),
                    reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_a_timm_user_encodes_at_the_trained_size_and_gets_the_published_map(seeded, tmp_path):
    """pretrained=True + resolve_data_config + create_transform: the 64x64 the checkpoint was trained at, and
    the mAP deephash-eval reports on the same query and database sets."""
    from deephash_zoo.evaluation import EvalOptions, run_evaluation

    _, ckpt, cache, _ = seeded
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf-home'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([sys.executable, '-c', _USER_ENCODES, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    user = json.loads((tmp_path / 'user.json').read_text())
    assert user['input_size'] == user['tagged'] == [3, 64, 64] and user['asked'] == [3, 96, 96]
    ev = run_evaluation(EvalOptions(checkpoint=ckpt, query_subset=30, db_subset=90, progress=False, plots=False))
    assert ev.report['img_size'] == 64 and ev.report['results']['16']['map'] == user['map']


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').is_dir() and not os.environ.get('FASHION_MNIST_DIR'),
                    reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_eval_and_index_take_hub_names_offline(seeded, tmp_path):
    """deephash-eval and deephash-index build with hf-hub:ORG/NAME (from the seeded cache, HF_HUB_OFFLINE=1)
    and local-dir:FOLDER give what the folder gives; a Hub name not in the cache is one line."""
    from deephash_zoo.evaluation import EvalOptions, run_evaluation

    _, ckpt, cache, _ = seeded
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf-home'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))

    def command(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, '-m', f'deephash_zoo.cli.{module}', *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    subset = ['--query-subset', '30', '--db-subset', '90', '--no-progress', '--no-plots']
    hub = command('eval', '--checkpoint', f'hf-hub:{REPO_ID}', *subset, '--json')
    assert hub.returncode == 0, hub.stderr[-3000:]
    report = json.loads(hub.stdout)
    assert report['checkpoint'] == f'hf-hub:{REPO_ID}'
    assert (tmp_path / 'runs' / 'hf-hub' / 'deephash-zoo--dath_n_16.fmnist' / 'eval' / 'metrics.json').is_file()
    local = command('eval', '--checkpoint', f'local-dir:{ckpt}', *subset, '--json', '--out', str(tmp_path / 'local'))
    assert local.returncode == 0, local.stderr[-3000:]
    folder = run_evaluation(EvalOptions(checkpoint=ckpt, query_subset=30, db_subset=90, progress=False, plots=False))
    for other in (report, json.loads(local.stdout)):
        assert other['weights_sha256'] == folder.report['weights_sha256']
        assert other['results']['16']['map'] == folder.report['results']['16']['map']

    index = command('index', 'build', '--checkpoint', f'hf-hub:{REPO_ID}', '--db-subset', '40', '--no-progress',
                    '--out', str(tmp_path / 'index'))
    assert index.returncode == 0, index.stderr[-3000:]
    manifest = json.loads((tmp_path / 'index' / 'manifest.json').read_text())
    assert manifest['num_items'] == 40 and manifest['weights_sha256'] == folder.report['weights_sha256']

    missing = command('eval', '--checkpoint', 'hf-hub:nobody/not-cached', *subset)
    assert missing.returncode == 2 and missing.stderr.count('\n') == 1, missing.stderr
    assert 'hf-hub:nobody/not-cached: checkpoint not found: offline (HF_HUB_OFFLINE=1)' in missing.stderr


def _broken_copies(ckpt: Path, root: Path) -> dict:
    """Copies of ``ckpt`` that must not serve codes: cut short, NaN in one tensor; and a 32-bit model's checkpoint."""
    import shutil

    from safetensors.torch import load_file, save_file

    copies = {name: root / name for name in ('truncated', 'nan')}
    for folder in copies.values():
        shutil.copytree(ckpt, folder)
    weights = (copies['truncated'] / 'model.safetensors')
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    state = load_file(str(ckpt / 'model.safetensors'))
    state['head.hash.fc.0.bias'][0] = float('nan')
    save_file(state, str(copies['nan'] / 'model.safetensors'), metadata={'format': 'pt'})
    copies['32-bit'] = save_checkpoint(timm.create_model('dath_n_32').eval(), root / '32-bit', dataset='fashion-mnist')
    return copies


def test_bad_weights_through_timm_and_into_the_cache_are_one_line(seeded, tmp_path):
    from deephash_zoo.hub.checkpoint import NonFiniteWeightsError

    _, ckpt, cache, _ = seeded
    copies = _broken_copies(ckpt, tmp_path)
    cut = r'the pretrained weights file \S*truncated/model\.safetensors is corrupt or truncated'  # names the file
    expected = {'truncated': (ValueError, f'dath_n_16: {cut}'),
                'nan': (NonFiniteWeightsError, r'1 weight tensor\(s\) hold NaN or infinity \(head.hash.fc.0.bias\)'),
                '32-bit': (ValueError, r'do not fit DATH with bits \(16,\) \(shape mismatch')}
    for name, (error, message) in expected.items():
        for device in ('cpu', 'meta'):  # the meta build for a CPU model, and the ordinary one (any other device)
            # dath_n_16's own entry reading the file, as pretrained=True reads the Hub's (a 32-bit model seeded
            # under its name, say)
            with pytest.raises(error, match=message) as refused:
                timm.create_model('dath_n_16', pretrained=True, device=device,
                                  pretrained_cfg_overlay=dict(file=str(copies[name] / 'model.safetensors')))
            assert '\n' not in str(refused.value), name
        if name != '32-bit':  # and through a folder's own config
            with pytest.raises(error, match=message):
                timm.create_model(f'local-dir:{copies[name]}', pretrained=True)
    for name, message in (('truncated', 'corrupt or truncated'), ('nan', 'hold NaN or infinity')):
        with pytest.raises(ValueError, match=message):  # seeding refuses what timm would refuse
            seed_hf_cache(copies[name], REPO_ID, tmp_path / f'cache-{name}')
        assert not (tmp_path / f'cache-{name}').exists()
    with pytest.raises(ValueError, match=f'holds dath_n_32, but repository {REPO_ID} names dath_n_16'):
        seed_hf_cache(copies['32-bit'], REPO_ID, tmp_path / 'cache-32')
    assert seed_hf_cache(copies['32-bit'], 'someone/my-dath.v1', tmp_path / 'own').is_dir()  # one's own name: any


def test_bad_hash_model_weights_through_timm_are_one_line(tmp_path):
    """A hash_model checkpoint loads through timm's generic entry (hash_backbone): the same checks, where NaN weights
    loaded silently and a misfit was torch's multi-line listing."""
    import shutil

    from safetensors.torch import load_file, save_file

    from deephash_zoo.hub.checkpoint import NonFiniteWeightsError

    good = save_checkpoint(deephash_zoo.hash_model('resnet18', bits=32).eval(), tmp_path / 'good')
    state = load_file(str(good / 'model.safetensors'))
    broken = {'nan': dict(state, **{'hash.fc.0.bias': torch.full((32,), float('nan'))}),
              'shape': dict(state, **{'hash.fc.0.weight': torch.zeros(16, 512)})}
    expected = {'nan': (NonFiniteWeightsError, r'1 weight tensor\(s\) hold NaN or infinity \(hash.fc.0.bias\)'),
                'shape': (ValueError, r'do not fit BackboneHash with bits \(32,\) \(shape mismatch'),
                'truncated': (ValueError, r'hash_backbone: the pretrained weights file \S*truncated/model\.safetensors '
                                          'is corrupt or truncated')}
    for name, (error, message) in expected.items():
        folder = tmp_path / name
        shutil.copytree(good, folder)
        weights = folder / 'model.safetensors'
        if name == 'truncated':
            weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
        else:
            save_file(broken[name], str(weights), metadata={'format': 'pt'})
        with pytest.raises(error, match=message) as refused:
            timm.create_model(f'local-dir:{folder}', pretrained=True)
        assert '\n' not in str(refused.value), name
    assert timm.create_model(f'local-dir:{good}', pretrained=True).bits == (32,)


def _edited_copy(ckpt: Path, dest: Path, **config_changes) -> Path:
    """A copy of the checkpoint folder (weights hard-linked), its config.json's ``pretrained_cfg``/``training``
    entries updated and other keys replaced."""
    from deephash_zoo.hub.cache import place_file

    dest.mkdir(parents=True)
    place_file(ckpt / 'model.safetensors', dest / 'model.safetensors')
    config = json.loads((ckpt / 'config.json').read_text())
    for key, value in config_changes.items():
        config[key] = dict(config.get(key) or {}, **value) if key in ('pretrained_cfg', 'training') else value
    (dest / 'config.json').write_text(json.dumps(config))
    return dest


def test_weights_the_repository_tag_misdescribes_are_not_seeded(seeded, tmp_path):
    """Weights trained at 96x96, or on data without the tag, were seeded as deephash-zoo/dath_n_16.fmnist, and
    pretrained=True then reported the tag's 64x64 for them; a name without a known tag takes any."""
    _, ckpt, _, _ = seeded
    at_96 = _edited_copy(ckpt, tmp_path / 'at-96', pretrained_cfg=dict(input_size=[3, 96, 96]),
                         training=dict(img_size=96))
    mosaic = _edited_copy(ckpt, tmp_path / 'mosaic', dataset='mosaic', pretrained_cfg=dict(tag=None, hf_hub_id=None))
    refusals = {at_96: rf"{at_96}: trained at 96x96, but repository {REPO_ID} names tag 'fmnist', whose weights "
                       r'pretrained=True serves at 64x64; use a repository name without \.fmnist',
                mosaic: rf"{mosaic}: trained on 'mosaic' \(tag None\), but repository {REPO_ID} names tag 'fmnist' "
                        r'\(fashion-mnist weights\)'}
    for folder, message in refusals.items():
        with pytest.raises(ValueError, match=message):
            seed_hf_cache(folder, REPO_ID, tmp_path / 'cache')
        assert not (tmp_path / 'cache').exists()
        assert seed_hf_cache(folder, f'someone/{folder.name}', tmp_path / 'own').is_dir()


def test_repo_ids_the_hub_refuses_are_not_seeded(seeded, tmp_path):
    """Names huggingface_hub refuses made cache folders every loader then refused (models--..--x among them)."""
    _, ckpt, _, _ = seeded
    for repo_id in ('org/name!', 'deephash zoo/dath_n_16', '../x', 'org/' + 'a' * 200):
        with pytest.raises(ValueError, match=rf"^repo id '{re.escape(repo_id)}': Repo id must use alphanumeric"):
            seed_hf_cache(ckpt, repo_id, tmp_path / 'cache')
    assert not (tmp_path / 'cache').exists()


def test_pretrained_without_published_weights_is_one_line(capsys):
    """--pretrained on a model without published weights, or an unknown tag: timm's RuntimeError after building
    the model, a 42-49 line traceback with exit 1; now one line naming what has weights, exit 2."""
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.cli.encode import main as encode_main
    from deephash_zoo.hub.cache import create_pretrained

    with pytest.raises(ValueError, match=r"^admth_cnnf_16: no pretrained weights are published for admth_cnnf_16 "
                                         r"\(timm\.list_pretrained\('admth_cnnf_16'\) is empty\); related models with "
                                         r'weights: admth_cnnf_multi\.fmnist'):
        create_pretrained('admth_cnnf_16')
    with pytest.raises(ValueError, match=r"^dath_n_16\.mosaic: no pretrained weights tagged 'mosaic' for dath_n_16; "
                                         r'weights exist for: dath_n_16\.fmnist$'):
        create_pretrained('dath_n_16.mosaic')
    assert run_main(encode_main, ['--model', 'dmlh_cnnf_16', '--pretrained', '--num', '1']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: dmlh_cnnf_16: no pretrained weights are published') and err.count('\n') == 1, err


_REVISION = r'''
import json, sys
import deephash_zoo
from deephash_zoo.hub.cache import create_pretrained

errors = {}
for name in sys.argv[2:]:
    try:
        create_pretrained(name)
    except FileNotFoundError as e:
        errors[name] = str(e)
json.dump(errors, open(sys.argv[1], 'w'))
'''


def test_a_revision_not_in_the_cache_is_named(seeded, tmp_path):
    """hf-hub:ORG/NAME@v2 not in the cache: the message dropped @v2 and spoke of refs/main."""
    _, _, cache, _ = seeded
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf-home'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    commit = 'a' * 40
    names = [f'hf-hub:{REPO_ID}@v2', f'hf-hub:{REPO_ID}@{commit}']
    proc = subprocess.run([sys.executable, '-c', _REVISION, str(tmp_path / 'errors.json'), *names], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads((tmp_path / 'errors.json').read_text())
    repo = cache / 'models--deephash-zoo--dath_n_16.fmnist'
    branch, pinned = errors[names[0]], errors[names[1]]
    assert branch.startswith(f'{REPO_ID}@v2: weights not found: offline (HF_HUB_OFFLINE=1)')
    assert f'{repo}/snapshots/<rev>/model.safetensors with refs/v2 naming <rev>' in branch and 'refs/main' in branch
    assert pinned.startswith(f'{REPO_ID}@{commit}: weights not found')
    assert f'{repo}/snapshots/{commit}/model.safetensors' in pinned and f"revision='{commit}'" in pinned
