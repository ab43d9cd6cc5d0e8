"""deephash-export's checks of what it is asked: flags that would be ignored, input sizes the model cannot take,
published weights that are not there (offline), a folder holding graphs of other weights, and exit status 1
when a graph disagrees with PyTorch. Small: dath_n at 64x64, 8 verification images."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.export import main
from deephash_zoo.hub.checkpoint import save_checkpoint, weights_sha256
from tests.test_data_fashion_mnist import HAS_FMNIST

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='verification needs dataset-fashion-mnist (.ci/setup.sh)')

ROOT = Path(__file__).resolve().parents[1]
SMALL = ['--img-size', '64', '--verify-images', '8']


def _run(args, capsys, status=2) -> str:
    """The command's one stderr line, asserting its exit status."""
    assert run_main(main, [str(a) for a in args]) == status
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err, err
    return err


def _snapshot(folder: Path) -> dict:
    """Name -> bytes of every file in ``folder`` (a folder's bytes are its listing)."""
    return {p.name: p.read_bytes() if p.is_file() else sorted(c.name for c in p.iterdir())
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope='module')
def checkpoint(module_tmp):
    """A dath_n_16 checkpoint (weights other than seed 0's), recorded as trained at 64x64."""
    torch.manual_seed(5)
    return save_checkpoint(timm.create_model('dath_n_16').eval(), module_tmp.mktemp('ck') / 'ck',
                           dataset='fashion-mnist', training={'img_size': 64})


@pytest.fixture(scope='module')
def fp32_folder(module_tmp):
    """An fp32 export of dath_n_16 (random weights, seed 0) at 64x64; tests copy it before writing."""
    if not HAS_FMNIST:
        pytest.skip('verification needs dataset-fashion-mnist (.ci/setup.sh)')
    out = module_tmp.mktemp('fp32') / 'out'
    assert main(['--onnx', '--model', 'dath_n_16', '--out', str(out), *SMALL]) == 0
    return out


@pytest.fixture
def folder(fp32_folder, tmp_path) -> Path:
    return Path(shutil.copytree(fp32_folder, tmp_path / 'out'))


@pytest.mark.parametrize('args, message', [
    (['--onnx', '--fp16'], '--fp16 is the precision of the TensorRT engine: add --tensorrt'),
    (['--onnx', '--int8-mode', 'dynamic'], '--int8-mode dynamic needs --int8'),
    (['--onnx', '--int8-mode', 'static'], '--int8-mode static needs --int8'),
])
def test_flags_that_would_be_ignored_are_refused(args, message, tmp_path, capsys):
    assert message in _run([*args, '--model', 'dath_n_16', '--out', tmp_path / 'o'], capsys)
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('size', [0, -1, 62])
def test_an_input_size_the_model_cannot_take_is_refused(size, tmp_path, capsys):
    """0 is not the default size; every size below the model's minimum is one line, before any weights."""
    err = _run(['--onnx', '--model', 'dath_n_16', '--img-size', size, '--out', tmp_path / 'o'], capsys)
    assert f'--img-size must be an integer >= 63 for dath_n_16, got {size}' in err
    assert not (tmp_path / 'o').exists()


def test_an_input_size_of_0_with_a_checkpoint_is_refused(checkpoint, tmp_path, capsys):
    """Not the checkpoint's training size in disguise."""
    err = _run(['--onnx', '--checkpoint', checkpoint, '--img-size', 0, '--out', tmp_path / 'o'], capsys)
    assert '--img-size must be an integer >= 63 for dath_n_16, got 0' in err
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('size', [0, 32])
def test_bench_refuses_an_input_size_before_timing(size, tmp_path, capsys):
    err = _run(['--bench', '--models', 'dath_n_16', '--img-size', size, '--out', tmp_path / 'o'], capsys)
    assert f'--img-size must be an integer >= 63 for dath_n_16, got {size}' in err
    assert not (tmp_path / 'o').exists()


def test_published_weights_not_in_the_cache_offline_are_one_line(tmp_path):
    """--pretrained goes through deephash_zoo.hub.create_pretrained, as deephash-encode does. huggingface_hub reads
    HF_HUB_OFFLINE / HF_HUB_CACHE when imported, so the command runs in a fresh process (see test_hub_cache.py)."""
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'empty-cache'),
               HF_HOME=str(tmp_path / 'hf-home'),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    env.pop('HF_TOKEN', None)
    out = tmp_path / 'o'
    proc = subprocess.run([sys.executable, '-m', 'deephash_zoo.cli.export', '--onnx', '--pretrained', '--model',
                           'dath_n_16', '--out', str(out), *SMALL], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count('\n') == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith('error: deephash-zoo/dath_n_16.fmnist: weights not found: offline (HF_HUB_OFFLINE=1)')
    assert f'{tmp_path / "empty-cache"}/models--deephash-zoo--dath_n_16.fmnist/snapshots' in proc.stderr
    assert 'seed_hf_cache' in proc.stderr
    assert not out.exists()


@needs_fmnist
@pytest.mark.parametrize('args, what', [
    (['--checkpoint', 'CK', '--int8', '--int8-mode', 'dynamic'], 'weights'),  # the walkthrough's case
    (['--model', 'dath_n_16', '--seed', '1'], 'weights'),
    (['--model', 'dath_n_16', '--img-size', '96'], 'size'),
    (['--model', 'dath_n_32'], 'model'),
])
def test_an_export_into_a_folder_of_other_weights_is_refused(args, what, folder, checkpoint, capsys):
    """One line naming what the folder holds, before any export; the folder is left as it was."""
    before = _snapshot(folder)
    sha = json.loads((folder / 'verification.json').read_text())['graphs']['dath_n_16.onnx']['weights_sha256']
    args = [checkpoint if a == 'CK' else a for a in args]
    err = _run(['--onnx', *args, *(['--img-size', '64'] if '--img-size' not in args else []), '--out', folder],
               capsys)
    assert f'{folder} holds graphs of other weights, model or input size: dath_n_16.onnx (dath_n_16 64x64, ' \
           f'weights sha256 {sha[:12]}...)' in err
    assert 'pass --overwrite to replace them' in err
    assert _snapshot(folder) == before


@needs_fmnist
def test_a_graph_without_a_verification_entry_is_known_by_its_metadata(folder, checkpoint, capsys):
    (folder / 'verification.json').unlink()
    (folder / 'other.onnx').write_bytes(b'not a graph')
    err = _run(['--onnx', '--checkpoint', checkpoint, '--out', folder], capsys)
    assert 'dath_n_16.onnx (dath_n_16 64x64, weights sha256 ' in err and 'other.onnx (unknown weights)' in err
    assert sorted(p.name for p in folder.iterdir()) == ['dath_n_16.onnx', 'other.onnx']


@needs_fmnist
def test_the_same_weights_again_add_a_graph_and_keep_the_others(folder, capsys):
    """Adding int8 to an fp32 export of the same weights works as before; an entry whose graph is gone goes."""
    data = json.loads((folder / 'verification.json').read_text())
    data['graphs']['gone.onnx'] = dict(data['graphs']['dath_n_16.onnx'], weights_sha256='0' * 64)
    (folder / 'verification.json').write_text(json.dumps(data))
    assert main(['--onnx', '--int8', '--int8-mode', 'dynamic', '--model', 'dath_n_16', '--out', str(folder),
                 *SMALL]) == 0
    graphs = json.loads((folder / 'verification.json').read_text())['graphs']
    assert sorted(graphs) == ['dath_n_16.int8.onnx', 'dath_n_16.onnx']
    assert len({g['weights_sha256'] for g in graphs.values()}) == 1
    assert sorted(p.name for p in folder.iterdir()) == ['dath_n_16.int8.onnx', 'dath_n_16.onnx', 'verification.json']


@needs_fmnist
def test_overwrite_replaces_the_graphs_of_other_weights(folder, checkpoint, capsys):
    assert main(['--onnx', '--checkpoint', str(checkpoint), '--model', 'dath_n_16', '--overwrite',
                 '--verify-images', '8', '--out', str(folder)]) == 0
    assert 'removed 1 graph(s) of other weights (--overwrite): dath_n_16.onnx' in capsys.readouterr().out
    graphs = json.loads((folder / 'verification.json').read_text())['graphs']
    assert list(graphs) == ['dath_n_16.onnx']
    assert graphs['dath_n_16.onnx']['weights_sha256'] == weights_sha256(checkpoint / 'model.safetensors')
    assert sorted(p.name for p in folder.iterdir()) == ['dath_n_16.onnx', 'verification.json']


@needs_fmnist
def test_overwrite_removes_graphs_of_another_model_with_the_new_ones(folder, capsys):
    assert main(['--onnx', '--model', 'dath_n_32', '--overwrite', '--out', str(folder), *SMALL]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ['dath_n_32.onnx', 'verification.json']
    assert list(json.loads((folder / 'verification.json').read_text())['graphs']) == ['dath_n_32.onnx']


@needs_fmnist
def test_a_graph_that_disagrees_exits_1_and_overwrite_then_removes_nothing(folder, monkeypatch, capsys):
    """Exit status 1 is 'a check the command reports failed' (cli/_common.py): here the fp32 check, held to an
    agreement no graph reaches. The refused export leaves the folder, stale graphs included, as it was."""
    import deephash_zoo.export.pipeline as pipeline
    from deephash_zoo.export.verify import Thresholds

    monkeypatch.setattr(pipeline, 'FP32', Thresholds(1.01, 1e-3))
    before = _snapshot(folder)
    err = _run(['--onnx', '--model', 'dath_n_32', '--overwrite', '--out', folder, *SMALL], capsys, status=1)
    assert 'error: dath_n_32.onnx: disagrees with PyTorch (sign agreement 1.0000 < 1.01' in err
    assert f'export refused, nothing written to {folder}' in err
    assert _snapshot(folder) == before


def test_overwrite_is_for_exports(tmp_path, capsys):
    assert '--overwrite replaces exported graphs' in _run(['--bench', '--overwrite', '--out', tmp_path / 'o'], capsys)
