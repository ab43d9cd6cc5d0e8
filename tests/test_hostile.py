"""Hostile but realistic requests: each is refused with one line naming the problem (exit status 2), and
nothing the user had is lost or half-written. One row per probe; the runs are tiny (DATH-N 16 bits, 64x64,
32 training items, batches of 16)."""
import hashlib
import json
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from safetensors.torch import load_file, save_file

from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.train import main as train_main
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
TINY = ['--model', 'dath_n_16', '--data', 'fashion-mnist', '--img-size', '64', '--subset', '32',
        '--batch-size', '16', '--lr', '3e-5', '--log-every', '1', '--device', 'cpu']


def _snapshot(folder: Path) -> Dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its sha256: what a refused request must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def _refused(capsys, argv: List[str], *needles: str) -> str:
    """Run deephash-train with ``argv``; assert exit status 2 and a single stderr line holding ``needles``."""
    code = run_main(train_main, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.replace('\r', '\n').splitlines() if line.strip().startswith('error: ')]
    assert len(errors) == 1 and 'Traceback' not in err, err  # progress bars aside, one line
    err = errors[0].strip()
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory) -> Path:
    """A finished two-step run: checkpoint/, last/ and train_log.jsonl."""
    out = tmp_path_factory.mktemp('hostile') / 'done'
    assert run_main(train_main, [*TINY, '--out', str(out), '--max-steps', '2']) == 0
    assert {'checkpoint', 'last', 'train_log.jsonl'} <= {p.name for p in out.iterdir()}
    return out


@needs_fmnist
@pytest.mark.parametrize('extra, needles', [
    ([], ('holds a run already', '--resume continues it', '--overwrite replaces it')),
    (['--resume', '--overwrite'], ('give one of them',)),
    (['--overwrite', '--data', 'list:/nonexistent/list.txt'], ('/nonexistent/list.txt',)),
    (['--overwrite', '--loss-arg', 'betta=2'], ('--loss-arg betta', 'beta, gamma')),
    (['--overwrite', '--loss-arg', 'beta=x'], ('--loss-arg beta=x: must be a finite number',)),
    (['--overwrite', '--loss-arg', 'multi_label_form=1'], ("multi_label_form=1: takes a word (default 'bce')",)),
    (['--overwrite', '--loss-arg', 'multi_label_form=foo'], ("multi_label_form must be 'bce' or 'paper'",)),
    (['--overwrite', '--loss-arg', 'beta=nan'], ('must be a finite number',)),
    (['--overwrite', '--loss-arg', 'label_weight=1'], ('set it with --label-weight',)),
    (['--overwrite', '--label-weight', '1'], ("DATH's label term is its own J2",)),
    (['--overwrite', '--epochs', '0'], ('--epochs 0: must be at least 1',)),
    (['--overwrite', '--subset', '0'], ('--subset 0: must be at least 1',)),
    (['--overwrite', '--max-steps', '0'], ('--max-steps 0: must be at least 1',)),
], ids=['no-flag', 'resume-and-overwrite', 'bad-data', 'unknown-loss-arg', 'loss-arg-not-number',
        'loss-arg-number-for-word', 'loss-arg-unknown-word', 'loss-arg-nan', 'label-weight-as-loss-arg',
        'label-weight-for-dath', 'epochs-0', 'subset-0', 'max-steps-0'])
def test_a_finished_run_survives_every_refused_start(finished_run, capsys, extra, needles):
    before = _snapshot(finished_run)
    _refused(capsys, [*TINY, '--out', str(finished_run), '--max-steps', '2', *extra], *needles)
    assert _snapshot(finished_run) == before


@needs_fmnist
def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / 'notes.txt'
    target.write_text('mine')
    _refused(capsys, [*TINY, '--out', str(target), '--max-steps', '1'], 'is a file, not a run folder')
    assert target.read_text() == 'mine'


@needs_fmnist
def test_overwrite_replaces_the_run_and_clears_a_killed_saves_leftovers(finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / 'again'
    shutil.copytree(finished_run, out)
    (out / '.checkpoint.deadbeef').mkdir()  # what SIGKILL during a save leaves
    (out / '.checkpoint.deadbeef' / 'model.safetensors').write_bytes(b'\0' * 1024)
    assert run_main(train_main, [*TINY, '--out', str(out), '--max-steps', '1', '--overwrite']) == 0
    said = capsys.readouterr()
    assert 'removed 1 temporary file(s) left by a killed run' in said.out + said.err
    assert not (out / '.checkpoint.deadbeef').exists()
    lines = (out / 'train_log.jsonl').read_text().splitlines()
    assert '"step": 1' in lines[-1] and not any('"step": 2' in line for line in lines)  # one new log, not two


@needs_fmnist
def test_diverged_run_saves_nothing_and_says_which_step(tmp_path, capsys):
    out = tmp_path / 'inf'
    # an update no float32 holds: J2 weighted 1e10 (the loss stays finite), at lr 1e35
    err = _refused(capsys, [*TINY, '--out', str(out), '--max-steps', '1', '--lr', '1e35', '--loss-arg', 'beta=1e10'],
                   'step 1: weights', 'is not finite', 'nothing of this run was saved', 'lower --lr')
    assert 'Traceback' not in err
    assert not (out / 'checkpoint').exists() and not (out / 'last').exists()


@needs_fmnist
def test_diverging_after_a_good_epoch_keeps_the_good_state(finished_run, tmp_path, capsys):
    import shutil

    out = tmp_path / 'resumed'
    shutil.copytree(finished_run, out)
    state = json.loads((out / 'last' / 'state.json').read_text())
    del state['extra']['settings']  # saved before runs recorded their settings: taken as it is, a new weight too
    (out / 'last' / 'state.json').write_text(json.dumps(state))
    good = _snapshot(out / 'last')
    _refused(capsys, [*TINY, '--out', str(out), '--epochs', '2', '--resume', '--loss-arg', 'beta=1e38'],
             'step 3: loss = inf', 'keeps the last good state (epoch 1, step 2)')
    assert _snapshot(out / 'last') == good


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_non_finite_tensors_names_every_bad_tensor_wherever_the_value_sits(dtype, value):
    from deephash_zoo.utils import non_finite_tensors

    tensors = {'empty': torch.zeros(0, 3, dtype=dtype), 'ints': torch.arange(7), 'fine': torch.randn(5, 4).to(dtype),
               'extremes': torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).min], dtype=dtype)}
    for where in (0, 9, 19):
        bad = torch.randn(4, 5).to(dtype)
        bad.view(-1)[where] = value
        tensors[f'bad{where}'] = bad
    assert non_finite_tensors(tensors) == ['bad0', 'bad9', 'bad19']


def test_non_finite_checkpoints_are_neither_saved_nor_loaded(tmp_path):
    import timm

    import deephash_zoo  # noqa: F401  (registers the models)
    from deephash_zoo.hub.checkpoint import NonFiniteWeightsError, load_checkpoint, save_checkpoint

    model = timm.create_model('dath_n_16')
    save_checkpoint(model, tmp_path / 'ok', card=False)
    weights = tmp_path / 'ok' / 'model.safetensors'
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name][..., 0] = float('nan')
    save_file(state, str(weights))
    with pytest.raises(NonFiniteWeightsError, match=f'hold NaN or infinity .*{name}'):
        load_checkpoint(tmp_path / 'ok')
    with torch.no_grad():
        next(model.parameters()).fill_(float('inf'))
    with pytest.raises(NonFiniteWeightsError, match='not saved'):
        save_checkpoint(model, tmp_path / 'bad', card=False)
    assert not (tmp_path / 'bad').exists()


def test_replace_dir_keeps_one_whole_version_at_every_instant(tmp_path):
    import sys

    from deephash_zoo.utils import _exchange, replace_dir, restore_dir

    final, new = tmp_path / 'checkpoint', tmp_path / '.checkpoint.new'
    for folder, text in ((final, 'old'), (new, 'new')):
        folder.mkdir()
        (folder / 'model.safetensors').write_text(text)
    if sys.platform.startswith('linux'):  # one atomic swap: no instant without a whole checkpoint
        probe_a, probe_b = tmp_path / 'a', tmp_path / 'b'
        probe_a.mkdir(), probe_b.mkdir()
        assert _exchange(probe_a, probe_b)
    replace_dir(new, final)
    assert (final / 'model.safetensors').read_text() == 'new'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith('.')) == []
    # the fallback's window: the old version set aside, the new one not yet in place (a process killed there)
    final.rename(tmp_path / '.checkpoint.old-0123abcd')
    assert restore_dir(final) and (final / 'model.safetensors').read_text() == 'new'
    assert not restore_dir(final)  # nothing set aside any more


class _WritesAFile:
    """Pickled, this object is a call to ``Path.touch(marker)``: any route that unpickles it leaves the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def planted(tmp_path):
    """A real checkpoint folder of dath_n_16 plus ``evil.bin``, a pickle that would write ``marker``."""
    import timm

    import deephash_zoo  # noqa: F401
    from deephash_zoo.hub.checkpoint import save_checkpoint

    # recorded as Fashion-MNIST weights at 64x64, so that it may be seeded under the published name dath_n_16.fmnist
    folder = save_checkpoint(timm.create_model('dath_n_16'), tmp_path / 'ckpt', dataset='fashion-mnist',
                             training=dict(img_size=64), card=False)
    marker = tmp_path / 'pickle-ran'
    torch.save({'weight': _WritesAFile(marker)}, folder / 'evil.bin')
    return folder, marker


def _set_model_args(folder: Path, **model_args) -> None:
    import json

    config = json.loads((folder / 'config.json').read_text())
    config['model_args'] = dict(config.get('model_args') or {}, **model_args)
    (folder / 'config.json').write_text(json.dumps(config))


def test_no_route_unpickles_a_planted_file(planted):
    import timm

    from deephash_zoo.hub.checkpoint import load_checkpoint, read_checkpoint_config

    folder, marker = planted
    _set_model_args(folder, checkpoint_path=str(folder / 'evil.bin'))  # timm's keyword that loads a file
    for route in (lambda: load_checkpoint(folder), lambda: read_checkpoint_config(folder),
                  lambda: timm.create_model(f'local-dir:{folder}', pretrained=True)):
        with pytest.raises(ValueError, match=r"model_args sets \['checkpoint_path'\].*refused"):
            route()
    _set_model_args(folder, checkpoint_path=None)
    config = (folder / 'config.json').read_text().replace('"checkpoint_path": null', '"drop_rate": 0.0, "x": 1')
    (folder / 'config.json').write_text(config)
    with pytest.raises(ValueError, match=r"model_args \['x'\] are not arguments of dath_n_16"):
        load_checkpoint(folder)
    (folder / 'config.json').write_text(config.replace(', "x": 1', ''))
    (folder / 'model.safetensors').unlink()
    (folder / 'evil.bin').rename(folder / 'pytorch_model.bin')  # what timm falls back to without safetensors
    with pytest.raises(FileNotFoundError, match='pickle files and never loaded'):
        load_checkpoint(folder)
    with pytest.raises(ValueError, match=r"no model.safetensors .*\['pytorch_model.bin'\].*never loaded"):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert not marker.exists()


_HF_ROUTE = '''
import sys, timm, deephash_zoo
try:
    timm.create_model('hf-hub:deephash-zoo/planted', pretrained=True)
except ValueError as e:
    print(e)
'''


def test_hf_hub_repository_without_safetensors_is_refused(planted, tmp_path):
    import os
    import subprocess
    import sys

    from deephash_zoo.hub.cache import seed_hf_cache

    folder, marker = planted
    snapshot = seed_hf_cache(folder, 'deephash-zoo/planted', cache_dir=tmp_path / 'cache')
    (snapshot / 'model.safetensors').unlink()
    (folder / 'evil.bin').rename(snapshot / 'pytorch_model.bin')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'cache'),
               HF_HOME=str(tmp_path / 'hf-home'))
    proc = subprocess.run([sys.executable, '-c', _HF_ROUTE], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert 'hf-hub:deephash-zoo/planted: model.safetensors is not available' in proc.stdout, proc.stderr
    assert 'only safetensors weights are loaded' in proc.stdout
    assert not marker.exists()



_REGISTRY_ROUTES = '''
import sys, timm, deephash_zoo
for route in ("name", "overlay", "missing"):
    try:
        if route == "name":  # the published name: timm's fallback to pytorch_model.bin when no .safetensors
            timm.create_model("dath_n_16", pretrained=True)
        else:
            file = sys.argv[1] if route == "overlay" else sys.argv[1] + ".nope.safetensors"
            timm.create_model("dath_n_16", pretrained=True, pretrained_cfg_overlay=dict(file=file))
        print(route, "LOADED")
    except Exception as e:
        print(route, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
'''


def test_the_published_name_and_a_file_overlay_never_unpickle(planted, tmp_path):
    """``pretrained=True`` by the published name reads model.safetensors and nothing else (offline, a missing one
    made timm unpickle pytorch_model.bin beside it), and ``pretrained_cfg_overlay=dict(file=...)`` takes only an
    existing .safetensors file."""
    import os
    import subprocess
    import sys

    from deephash_zoo.hub.cache import seed_hf_cache

    folder, marker = planted
    snapshot = seed_hf_cache(folder, 'deephash-zoo/dath_n_16.fmnist', cache_dir=tmp_path / 'cache')
    (snapshot / 'model.safetensors').unlink()
    evil = snapshot / 'pytorch_model.bin'
    (folder / 'evil.bin').rename(evil)
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'cache'),
               HF_HOME=str(tmp_path / 'hf-home'))
    proc = subprocess.run([sys.executable, '-c', _REGISTRY_ROUTES, str(evil)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    said = dict(line.split(' ', 1) for line in proc.stdout.splitlines())
    assert said['name'].startswith('LocalEntryNotFoundError'), proc.stdout + proc.stderr  # the documented error
    assert said['overlay'] == f'ValueError {evil}: only safetensors weights are loaded (a .bin file may be a ' \
                              'pickle, which is never loaded); give a .safetensors file', proc.stdout
    assert said['missing'] == f'ValueError {evil}.nope.safetensors: no such weights file', proc.stdout
    assert not marker.exists()

@pytest.fixture(scope='module')
def hostile_images(tmp_path_factory):
    """A 20-megapixel pixel strip (2.5 KB: within the pixel bound, not the aspect bound) and a 225-megapixel
    decompression bomb (a few hundred KB)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp('images')
    Image.new('1', (2_000_000, 10)).save(folder / 'strip.png')
    Image.new('1', (15_000, 15_000)).save(folder / 'bomb.png')
    Image.new('L', (40, 30), 90).save(folder / 'ok.png')
    return folder


def test_images_beyond_the_bounds_are_refused_before_decoding(hostile_images):
    from deephash_zoo.data.images import ImageRejected, open_rgb
    from deephash_zoo.demo.uploads import UploadError, open_upload

    assert open_rgb(hostile_images / 'ok.png').size == (40, 30)
    with pytest.raises(ImageRejected, match=r'strip\.png is 2,000,000 x 10 pixels; the longer side may be at most 20'):
        open_rgb(hostile_images / 'strip.png')
    with pytest.raises(UploadError, match='the longer side may be at most 20 times the shorter'):
        open_upload(hostile_images / 'strip.png')
    with pytest.raises(ImageRejected, match=r'bomb\.png (is 15,000 x 15,000 pixels|decodes to more than 40 mega)'):
        open_rgb(hostile_images / 'bomb.png')
    with pytest.raises(UploadError, match='megapixels'):
        open_upload(hostile_images / 'bomb.png')


@pytest.mark.parametrize('name', ['strip.png', 'bomb.png'])
def test_encode_refuses_a_hostile_image_in_one_line(hostile_images, capsys, name):
    from deephash_zoo.cli.encode import main as encode_main

    code = run_main(encode_main, ['--model', 'dath_n_16', '--images', str(hostile_images / 'ok.png'),
                                  str(hostile_images / name)])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and f'{name} ' in err and 'Traceback' not in err, err


def test_disk_full_during_a_checkpoint_save_keeps_the_previous_one_whole(tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    import timm

    import deephash_zoo  # noqa: F401
    from deephash_zoo.hub.checkpoint import load_checkpoint, save_checkpoint

    first = timm.create_model('dath_n_16')
    save_checkpoint(first, tmp_path / 'checkpoint', card=False)
    before = _snapshot(tmp_path)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b'\0' * 4096)  # a part was written, then the disk filled up
        raise OSError(errno.ENOSPC, 'No space left on device', str(filename))

    monkeypatch.setattr(safetensors.torch, 'save_file', full_disk)
    with pytest.raises(OSError, match='No space left on device'):
        save_checkpoint(timm.create_model('dath_n_16', drop_rate=0.1), tmp_path / 'checkpoint', card=False)
    assert _snapshot(tmp_path) == before  # no temporary folder left, the previous checkpoint untouched
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / 'checkpoint') is not None


@pytest.mark.parametrize('raised, status, needle', [
    (OSError(28, 'No space left on device', '/data/out'), 3, 'error: /data/out: No space left on device (free'),
    (PermissionError(13, 'Permission denied', '/etc/x'), 3, 'error: /etc/x: Permission denied'),
    (KeyboardInterrupt(), 130, 'error: interrupted'),
    (ValueError('bad value'), 2, 'error: bad value'),
])
def test_exit_statuses_are_the_documented_ones(capsys, raised, status, needle):
    def main(argv):
        raise raised

    assert run_main(main, ['--x']) == status
    err = capsys.readouterr().err
    assert err.strip() == needle.strip() or err.startswith(needle), err
    assert err.count('\n') == 1


def test_debug_shows_the_traceback(capsys):
    def main(argv):
        assert '--debug' not in argv  # the flag is the runner's, not the command's
        raise ValueError('bad value')

    with pytest.raises(ValueError, match='bad value'):
        run_main(main, ['--debug'])


@pytest.mark.parametrize('bits', [1.5, None, True, '16', (), [16, 0], [32, 16]])
def test_hash_model_refuses_code_lengths_that_are_not_lengths(bits):
    from deephash_zoo import hash_model

    with pytest.raises(ValueError, match='bits must be|code lengths must be'):
        hash_model('resnet18', bits=bits)


def test_codes_of_the_wrong_width_and_images_of_another_precision():
    import timm

    import deephash_zoo  # noqa: F401

    model = timm.create_model('admth_cnnf_multi').eval()
    width = r'expected \(batch, 160\) codes \(lengths \(16, 32, 48, 64\)\), got \(2, 100\)'
    with pytest.raises(ValueError, match=width):
        model.split_codes(torch.zeros(2, 100))
    x = torch.rand(2, 3, 64, 64)
    expected = model.encode(x)
    assert torch.equal(model.encode(x.double()), expected)  # fp64 images: cast to the model's precision
    assert model.encode(x.half()).shape == expected.shape


@pytest.mark.parametrize('listed', ['../outside.png', '/etc/outside.png', 'a/../../outside.png'])
def test_list_files_cannot_name_images_outside_the_root(tmp_path, listed):
    from deephash_zoo.data import load_list_file

    (tmp_path / 'list.txt').write_text(f'ok.png 1 0\n{listed} 0 1\n')
    with pytest.raises(ValueError, match=r'list\.txt:2: image path .* leaves the image root'):
        load_list_file(tmp_path / 'list.txt', tmp_path, check_images=False)


def test_a_config_naming_a_timm_model_that_does_not_hash_is_refused(planted):
    import json

    from deephash_zoo.hub.checkpoint import load_checkpoint

    folder, _ = planted
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, architecture='resnet18', model_args={})))
    with pytest.raises(ValueError, match="'resnet18' is a timm model but not a hashing one"):
        load_checkpoint(folder)


@needs_fmnist
@pytest.mark.parametrize('probe, needles', [
    ('resume', ('--resume continues a run with its own settings', "model 'dath_s_32' (the run: 'dath_n_16')")),
    ('init-weights', ('do not fit', '--init takes a trunk file')),
    ('init-folder', ('not a readable safetensors file',)),
])
def test_resume_or_init_with_another_models_weights_is_one_line(finished_run, tmp_path, capsys, probe, needles):
    import shutil

    other = [a if a != 'dath_n_16' else 'dath_s_32' for a in TINY]
    if probe == 'resume':
        out = tmp_path / 'other'
        shutil.copytree(finished_run, out)
        before = _snapshot(out)
        _refused(capsys, [*other, '--out', str(out), '--epochs', '2', '--resume'], *needles)
        assert _snapshot(out) == before
        return
    init = finished_run / 'checkpoint' / 'model.safetensors' if probe == 'init-weights' else finished_run
    _refused(capsys, [*other, '--out', str(tmp_path / 'fresh'), '--max-steps', '1', '--init', str(init)], *needles)
    assert not (tmp_path / 'fresh').exists()


def test_idx_gzip_bombs_cost_no_more_than_their_header(tmp_path):
    import gzip
    import resource

    from deephash_zoo.data import read_idx

    huge = tmp_path / 'huge-idx3-ubyte.gz'  # announces 60,000 x 28,000 x 28 bytes: 47 GB
    with gzip.open(huge, 'wb') as f:
        f.write(bytes([0, 0, 8, 3]) + b''.join(n.to_bytes(4, 'big') for n in (60_000, 28_000, 28)))
    with pytest.raises(ValueError, match='over the 1,073,741,824-byte limit'):
        read_idx(huge)
    padded = tmp_path / 'padded-idx1-ubyte.gz'  # announces 10 bytes, inflates to 256 MB
    with gzip.open(padded, 'wb', compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, 'big'))
        block = bytes(1 << 20)
        for _ in range(256):
            f.write(block)
    assert padded.stat().st_size < 2_000_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r'padded idx data: header says \(10,\) = 10 bytes, file holds more'):
        read_idx(padded)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 * 1024  # KiB: under 64 MB more


def test_a_record_cut_short_in_a_resumable_log_is_named_with_its_line(tmp_path, capsys):
    """An experiment's cells.jsonl whose last record a kill cut in half: one line naming the file and line."""
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.cli.experiment import main
    from deephash_zoo.utils import read_jsonl

    assert read_jsonl(tmp_path / 'absent.jsonl') == []
    cells = tmp_path / 'cells.jsonl'
    cells.write_text('{"model": "dath_n_16", "seed": 0}\n\n{"model": "dath_s_16", "se')
    with pytest.raises(ValueError, match=r'cells.jsonl, line 3: not a JSON record'):
        read_jsonl(cells)
    assert run_main(main, ['ablation', '--budget', 'tiny', '--work', str(tmp_path), '--resume']) == 2
    err = capsys.readouterr().err
    assert 'cells.jsonl, line 3: not a JSON record' in err and 'Traceback' not in err


class _RejectsItemTwo(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        from deephash_zoo.data.images import ImageRejected

        if i == 2:
            raise ImageRejected('listed at own.txt:3: /data/bad.png: cannot open image (image file is truncated)')
        return torch.zeros(1)


def test_an_error_in_a_data_loader_worker_is_one_line(capsys):
    """With --workers, torch re-raised a worker's error with the worker's traceback as its message: 18 lines."""
    def main(argv):
        for _ in torch.utils.data.DataLoader(_RejectsItemTwo(), batch_size=1, num_workers=1):
            pass
        return 0

    assert run_main(main, []) == 2
    err = capsys.readouterr().err
    assert err == 'error: listed at own.txt:3: /data/bad.png: cannot open image (image file is truncated)\n', err


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_training_on_a_device_the_machine_lacks_is_refused(tmp_path, capsys):
    """--device cuda (TrainConfig(device='cuda')) on a CPU machine trained on the CPU and recorded 'cuda'."""
    argv = [a if a != 'cpu' else 'cuda' for a in TINY] + ['--out', str(tmp_path / 'run')]
    _refused(capsys, argv, "device 'cuda': no CUDA device is available on this machine")
    assert not (tmp_path / 'run').exists()
