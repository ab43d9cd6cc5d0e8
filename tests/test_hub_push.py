"""deephash-push: the upload folder, the dry run, the token check, and the upload itself through a recording
stand-in for ``huggingface_hub.HfApi`` (the only thing replaced: the network boundary)."""
import json

import pytest
import timm
import torch
from huggingface_hub import ModelCard, constants

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.push import main as push_main
from deephash_zoo.hub import push as push_module
from deephash_zoo.hub.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from tests.test_hub_card import _metrics

REPO = 'someone/dath_n_16.fmnist'


class RecordingApi:
    """Stands in for HfApi: records what would go to the Hub, and what the folder held at upload time."""

    instances: list = []

    def __init__(self, token=None):
        self.token = token
        self.calls = []
        RecordingApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(('create_repo', repo_id, kwargs))
        return f'https://huggingface.co/{repo_id}'

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(('create_branch', repo_id, kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs['folder_path'])
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(('upload_folder', kwargs['repo_id'], kwargs))

        class Info:
            commit_url = f'https://huggingface.co/{kwargs["repo_id"]}/commit/abc123'
        return Info()


@pytest.fixture(scope='module')
def ckpt(module_tmp):
    torch.manual_seed(0)
    model = timm.create_model('dath_n_16', num_labels=10).eval()
    root = module_tmp.mktemp('push')
    path = save_checkpoint(model, root / 'checkpoint', dataset='fashion-mnist',
                           training=dict(epochs=1, img_size=64, seed=0, out='/home/me/runs/x', data_root=None))
    report = _metrics(path)
    report['results'] = {'16': report['results']['16']}
    (root / 'metrics.json').write_text(json.dumps(report))
    return path, root / 'metrics.json', report


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    for var in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HF_OIDC_RESOURCE'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-token'))


def test_dry_run_builds_and_lists(ckpt, tmp_path, no_token, capsys, monkeypatch):
    path, metrics, report = ckpt
    monkeypatch.setattr(push_module, 'HfApi', RecordingApi)
    RecordingApi.instances.clear()
    out = tmp_path / 'upload'
    assert run_main(push_main, ['--checkpoint', str(path), '--repo-id', REPO, '--dry-run', '--metrics', str(metrics),
                                '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert RecordingApi.instances == []  # nothing remote, and no token needed
    assert f'would upload to https://huggingface.co/{REPO}' in printed
    for name in ('config.json', 'model.safetensors', 'README.md'):
        assert name in printed
    assert '228.3 MB' in printed and 'training.out' in printed and f'upload folder: {out}' in printed
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['training']['out'] == 'x'  # no local path leaves the machine
    assert weights_sha256(out / 'model.safetensors') == report['weights_sha256']
    card = ModelCard.load(out / 'README.md')
    assert card.data.eval_results[0].metric_value == report['results']['16']['map']
    assert f"timm.create_model('hf-hub:{REPO}', pretrained=True)" in card.text
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(load_checkpoint(out)(x), load_checkpoint(path)(x))


def test_without_token_one_line_before_any_work(tmp_path, no_token, capsys, monkeypatch):
    monkeypatch.setattr(push_module, 'HfApi', RecordingApi)
    RecordingApi.instances.clear()
    code = run_main(push_main, ['--checkpoint', str(tmp_path / 'does-not-exist'), '--repo-id', REPO,
                                '--out', str(tmp_path / 'upload')])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1, err
    assert err.startswith('error: no Hugging Face token: set HF_TOKEN or run `hf auth login`')
    assert RecordingApi.instances == [] and not (tmp_path / 'upload').exists()


def test_upload_goes_through_hfapi(ckpt, tmp_path, monkeypatch, capsys):
    path, metrics, _ = ckpt
    monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
    monkeypatch.setattr(push_module, 'HfApi', RecordingApi)
    RecordingApi.instances.clear()
    assert run_main(push_main, ['--checkpoint', str(path.parent), '--repo-id', REPO, '--private',
                                '--metrics', str(metrics)]) == 0
    printed = capsys.readouterr().out
    (api,) = RecordingApi.instances
    assert api.token == 'hf_test_token'
    (create, upload) = api.calls
    assert create == ('create_repo', REPO, dict(private=True, exist_ok=True, repo_type='model'))
    assert upload[0] == 'upload_folder' and upload[1] == REPO and upload[2]['repo_type'] == 'model'
    assert sorted(api.uploaded) == ['README.md', 'config.json', 'model.safetensors']
    assert api.uploaded['model.safetensors'] == (path / 'model.safetensors').read_bytes()
    assert 'commit: https://huggingface.co/someone/dath_n_16.fmnist/commit/abc123' in printed
    assert 'temporary (removed)' in printed


def test_library_call_and_refusals(ckpt, tmp_path):
    path, _, _ = ckpt

    class FailingApi(RecordingApi):
        def upload_folder(self, **kwargs):
            raise OSError('403 Forbidden: you cannot write to someone')

    api = FailingApi()
    with pytest.raises(push_module.PushError, match=r'someone/dath_n_16\.fmnist: upload failed \(OSError: 403'):
        push_module.push_checkpoint(path, REPO, api=api, token='t', out_dir=tmp_path / 'u')
    assert api.calls[0][0] == 'create_repo'
    with pytest.raises(ValueError, match="--repo-id 'dath_n_16': expected ORG/NAME"):
        push_module.push_checkpoint(path, 'dath_n_16', dry_run=True)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text((path / 'config.json').read_text())
    (broken / 'model.safetensors').write_bytes(b'\x01' * 100)
    with pytest.raises(ValueError, match=r'broken/model\.safetensors: corrupt or truncated'):
        push_module.push_checkpoint(broken, REPO, dry_run=True, out_dir=tmp_path / 'u2')
    assert not (tmp_path / 'u2').exists()


def test_revision_and_pull_request(ckpt, monkeypatch, capsys):
    """--revision commits to a branch (created when missing); --create-pr opens a pull request instead."""
    path, metrics, _ = ckpt
    monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
    monkeypatch.setattr(push_module, 'HfApi', RecordingApi)
    RecordingApi.instances.clear()
    assert run_main(push_main, ['--checkpoint', str(path), '--repo-id', REPO, '--revision', 'v2']) == 0
    (api,) = RecordingApi.instances
    assert [c[0] for c in api.calls] == ['create_repo', 'create_branch', 'upload_folder']
    assert api.calls[1][2]['branch'] == 'v2' and api.calls[2][2]['revision'] == 'v2'
    RecordingApi.instances.clear()
    assert run_main(push_main, ['--checkpoint', str(path), '--repo-id', REPO, '--create-pr']) == 0
    (api,) = RecordingApi.instances
    assert [c[0] for c in api.calls] == ['create_repo', 'upload_folder'] and api.calls[1][2]['create_pr'] is True


def test_no_network_is_one_line(ckpt, tmp_path):
    """The real HfApi against an address nothing listens on: a PushError naming the repository, not httpx's
    traceback."""
    from huggingface_hub import HfApi

    path, _, _ = ckpt
    api = HfApi(endpoint='http://127.0.0.1:9', token='hf_not_a_token')
    with pytest.raises(push_module.PushError, match=r'someone/dath_n_16\.fmnist: upload failed \(\w*Error: .*'
                                                    r'is http://127\.0\.0\.1:9 reachable\?'):
        push_module.push_checkpoint(path, REPO, api=api, token='hf_not_a_token', out_dir=tmp_path / 'u')


def test_a_whole_zoo_build_in_one_command(ckpt, tmp_path, no_token, capsys):
    """--zoo WORK pushes every evaluated model of a build to ORG/MODEL.TAG with its metrics; --dry-run lists them."""
    import shutil

    path, metrics, _ = ckpt
    work = tmp_path / 'zoo'
    (work / 'dath_n_16' / 'eval').mkdir(parents=True)
    shutil.copytree(path, work / 'dath_n_16' / 'checkpoint')
    shutil.copy(metrics, work / 'dath_n_16' / 'eval' / 'metrics.json')
    (work / 'pretrain-alexnet').mkdir()  # a trunk folder: no checkpoint, not pushed
    (work / 'stages.jsonl').write_text('')
    assert run_main(push_main, ['--zoo', str(work), '--org', 'someone', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '1 models of' in out and 'would upload to https://huggingface.co/someone/dath_n_16.fmnist' in out
    assert run_main(push_main, ['--zoo', str(tmp_path), '--dry-run']) == 2
    assert 'not a deephash-zoo build folder' in capsys.readouterr().err


def _linked_copy(ckpt, dest, **config_changes):
    """A copy of the checkpoint folder at ``dest`` (weights hard-linked), its config.json changed: ``pretrained_cfg``
    and ``training`` entries are merged, others replaced."""
    from deephash_zoo.hub.cache import place_file

    dest.mkdir(parents=True)
    for f in ckpt.iterdir():
        place_file(f, dest / f.name) if f.name == 'model.safetensors' else (dest / f.name).write_bytes(f.read_bytes())
    config = json.loads((ckpt / 'config.json').read_text())
    for key, value in config_changes.items():
        config[key] = dict(config.get(key) or {}, **value) if key in ('pretrained_cfg', 'training') else value
    (dest / 'config.json').write_text(json.dumps(config))
    return dest


def _no_work(monkeypatch):
    """Make any loading of the checkpoint fail the test: a refusal must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError('the checkpoint was loaded before the refusal')

    monkeypatch.setattr(push_module, 'load_checkpoint', refuse)


def test_out_that_is_not_an_upload_folder_is_refused_before_any_work(ckpt, tmp_path, no_token, capsys,
                                                                     monkeypatch):
    """--out is replaced whole: a folder of the user's own files, a file, a training run (the one pushed too) or the
    checkpoint itself were deleted (a file became a folder, the file hidden beside it as .NAME.<hex>)."""
    path, _, _ = ckpt
    own = tmp_path / 'mine'
    own.mkdir()
    (own / 'notes.txt').write_text('mine')
    a_file = tmp_path / 'a-file'
    a_file.write_text('mine')
    run = _linked_copy(path, tmp_path / 'run' / 'checkpoint').parent
    (run / 'train_log.jsonl').write_text('{}\n')
    refused = {own: 'holds notes.txt, not an upload folder', a_file: 'a file or link is there',
               run: 'holds checkpoint, train_log.jsonl, not an upload folder',
               run / 'checkpoint': 'is the checkpoint being pushed', a_file / 'sub': f'a file stands at {a_file}'}
    before = {p: sorted(q.name for q in p.iterdir()) if p.is_dir() else p.read_text() for p in (own, a_file, run)}
    _no_work(monkeypatch)
    for out, message in refused.items():
        assert run_main(push_main, ['--checkpoint', str(run), '--repo-id', REPO, '--dry-run',
                                    '--out', str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'error: {out}: {message}') and err.count('\n') == 1, err
    after = {p: sorted(q.name for q in p.iterdir()) if p.is_dir() else p.read_text() for p in (own, a_file, run)}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ['a-file', 'mine', 'run']


def test_out_new_empty_or_an_earlier_upload_is_written(ckpt, tmp_path):
    path, _, _ = ckpt
    empty = tmp_path / 'empty'
    empty.mkdir()
    for out in (tmp_path / 'new', empty, empty):  # the third replaces the second's upload folder
        plan = push_module.build_upload_folder(path, out, REPO, verify=False)
        assert sorted(p.name for p in plan.folder.iterdir()) == sorted(push_module.UPLOAD_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'new']  # no temporary left


def test_weights_the_repository_tag_misdescribes_are_refused(ckpt, tmp_path, monkeypatch):
    """ORG/MODEL.fmnist serves Fashion-MNIST weights at 64x64 (pretrained=True reports that size): weights trained
    at 96 or on other data were pushed under it; a name without a known tag takes any."""
    path, _, _ = ckpt
    at_96 = _linked_copy(path, tmp_path / 'at-96', pretrained_cfg=dict(input_size=[3, 96, 96]),
                         training=dict(img_size=96))
    mosaic = _linked_copy(path, tmp_path / 'mosaic', dataset='mosaic', pretrained_cfg=dict(tag=None, hf_hub_id=None))
    refusals = {at_96: rf"{at_96}: trained at 96x96, but repository {REPO} names tag 'fmnist', whose weights "
                       r'pretrained=True serves at 64x64',
                mosaic: rf"{mosaic}: trained on 'mosaic' \(tag None\), but repository {REPO} names tag 'fmnist'"}
    with monkeypatch.context() as m:
        _no_work(m)
        for folder, message in refusals.items():
            with pytest.raises(ValueError, match=message):
                push_module.push_checkpoint(folder, REPO, dry_run=True, out_dir=tmp_path / 'u')
        with pytest.raises(ValueError, match=r'holds dath_n_16, but repository someone/dath_n_32\.fmnist names '
                                             r'dath_n_32'):
            push_module.push_checkpoint(path, 'someone/dath_n_32.fmnist', dry_run=True, out_dir=tmp_path / 'u')
    assert not (tmp_path / 'u').exists()
    for folder in (at_96, mosaic):
        plan = push_module.build_upload_folder(folder, tmp_path / f'own-{folder.name}', 'someone/my-dath', verify=False)
        assert plan.folder.is_dir()


def test_a_zoo_model_without_metrics_is_refused_by_name(ckpt, tmp_path, no_token, capsys, monkeypatch):
    """--zoo skipped an unevaluated model silently (its docstring said it was refused) and pushed the rest."""
    path, metrics, _ = ckpt
    work = tmp_path / 'zoo'
    for model in ('dath_n_16', 'dath_n_32', 'dath_s_16'):
        _linked_copy(path, work / model / 'checkpoint')
    (work / 'dath_n_16' / 'eval').mkdir()
    (work / 'dath_n_16' / 'eval' / 'metrics.json').write_text(metrics.read_text())
    (work / 'stages.jsonl').write_text('')
    monkeypatch.setattr(push_module, 'HfApi', RecordingApi)
    monkeypatch.setenv('HF_TOKEN', 'hf_test_token')
    RecordingApi.instances.clear()
    _no_work(monkeypatch)
    assert run_main(push_main, ['--zoo', str(work), '--org', 'someone']) == 2
    err = capsys.readouterr().err
    assert err == (f'error: {work}: not evaluated (no eval/metrics.json), so nothing is pushed: dath_n_32, '
                   'dath_s_16; finish the build with deephash-zoo build\n')
    assert RecordingApi.instances == []


def test_a_runs_evaluation_goes_on_the_card(ckpt, tmp_path, no_token, capsys):
    """--checkpoint RUN without --metrics: the card had no results although deephash-eval had written
    RUN/eval/metrics.json; where there is none, one warning line says the card will have none."""
    path, metrics, report = ckpt
    run = _linked_copy(path, tmp_path / 'run' / 'checkpoint').parent
    (run / 'eval').mkdir()
    (run / 'eval' / 'metrics.json').write_text(metrics.read_text())
    for given in (run, run / 'checkpoint'):
        out = tmp_path / f'upload-{given.name}'
        assert run_main(push_main, ['--checkpoint', str(given), '--repo-id', REPO, '--dry-run',
                                    '--out', str(out)]) == 0
        assert f'card results from {run / "eval" / "metrics.json"}' in capsys.readouterr().out
        card = ModelCard.load(out / 'README.md')
        assert card.data.eval_results[0].metric_value == report['results']['16']['map']
    (run / 'eval' / 'metrics.json').unlink()
    assert run_main(push_main, ['--checkpoint', str(run), '--repo-id', REPO, '--dry-run']) == 0
    err = capsys.readouterr().err
    assert err == (f'warning: {run / "eval" / "metrics.json"} does not exist: the card has no results (run '
                   f'deephash-eval --checkpoint {run}, or pass --metrics)\n')


def test_metrics_mismatch_names_the_users_checkpoint(ckpt, tmp_path):
    """The errors named the temporary folder (/tmp/deephash-push-*/.NAME.<hex>), gone when they were read."""
    path, _, report = ckpt
    other_model, other_weights = tmp_path / 'other-model.json', tmp_path / 'other-weights.json'
    other_model.write_text(json.dumps(dict(report, model='dath_n_32')))
    other_weights.write_text(json.dumps(dict(report, weights_sha256='f' * 64)))
    expected = {other_model: rf"{other_model}: metrics of 'dath_n_32', but {path} holds 'dath_n_16'",
                other_weights: rf'{other_weights}: measured on weights sha256 ffffffffffff\.\.\., but '
                               rf'{path}/model\.safetensors has '}
    for metrics, message in expected.items():
        with pytest.raises(ValueError, match=message) as refused:
            push_module.push_checkpoint(path, REPO, dry_run=True, metrics=metrics)
        assert 'deephash-push-' not in str(refused.value)


def test_uploaded_config_names_the_repository_pushed_to(ckpt, tmp_path):
    """config.json kept the zoo's hf_hub_id (deephash-zoo/...) when pushed elsewhere: a copy downloaded from
    someone/... and loaded with local-dir: said it came from the zoo. timm's hf-hub: loads set it to the repository
    they read, and so does the upload now."""
    path, _, _ = ckpt
    recorded = json.loads((path / 'config.json').read_text())['pretrained_cfg']['hf_hub_id']
    assert recorded == 'deephash-zoo/dath_n_16.fmnist'
    plan = push_module.build_upload_folder(path, tmp_path / 'upload', REPO, verify=False)
    assert json.loads((plan.folder / 'config.json').read_text())['pretrained_cfg']['hf_hub_id'] == REPO
    assert timm.create_model(f'local-dir:{plan.folder}', pretrained=True).pretrained_cfg['hf_hub_id'] == REPO
