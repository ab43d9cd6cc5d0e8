"""The README's main command: deephash-encode on Fashion-MNIST, and its one-line errors."""
import json
from pathlib import Path

import pytest

from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.encode import main
from tests.test_data_fashion_mnist import HAS_FMNIST


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh installs it)')
def test_encode_prints_codes_and_timing(tmp_path, capsys):
    out = tmp_path / 'codes.json'
    assert run_main(main, ['--model', 'admth_cnnf_16', '--num', '3', '--img-size', '64', '--repeats', '1',
                           '--json-out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '16-bit codes' in printed and 'ms/image' in printed and 'Ankle boot' in printed
    report = json.loads(out.read_text())
    assert len(report['codes']) == 3 and all(len(r['bits']) == 16 for r in report['codes'])
    assert report['ms_per_image'] > 0
    assert run_main(main, ['--model', 'admth_cnnf_16', '--num', '3', '--img-size', '64', '--repeats', '1',
                           '--json']) == 0
    printed = json.loads(capsys.readouterr().out)  # --json: the same record on stdout, nothing else
    assert [r['bits'] for r in printed['codes']] == [r['bits'] for r in report['codes']]


def test_encode_image_files(tmp_path, capsys):
    from PIL import Image

    Image.new('RGB', (40, 30), (10, 200, 30)).save(tmp_path / 'a.png')
    (tmp_path / 'b.png').write_bytes(b'not an image')
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(tmp_path / 'a.png'), '--img-size', '64',
                           '--repeats', '1']) == 0
    assert 'a.png' in capsys.readouterr().out
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(tmp_path / 'b.png')]) == 2
    assert 'b.png: cannot open image' in capsys.readouterr().err


@pytest.mark.parametrize('args, message', [
    (['--model', 'dath_alexnet_33'], 'Unknown model (dath_alexnet_33)'),
    (['--model', 'dath_n_16', '--bits', '20'], 'has code lengths (16,); got --bits 20'),
    (['--model', 'resnet18', '--img-size', '64'], 'resnet18 has no hash layer'),
    (['--model', 'dath_n_16', '--data-root', '/nonexistent'], 'Fashion-MNIST file not found'),
    (['--model', 'dath_n_16', '--fmnist-dir', '/nonexistent'], 'Fashion-MNIST file not found'),  # the old name
])
def test_encode_errors_are_one_line(args, message, capsys):
    assert run_main(main, args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1 and 'Traceback' not in err


def test_encode_a_folder_to_npy_with_ids_beside(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    photos = tmp_path / 'photos'
    (photos / 'sub').mkdir(parents=True)
    for i, name in enumerate(('x.png', 'sub/y.png', 'z.jpg')):
        Image.new('RGB', (40 + i, 30), (10 * i, 200, 30)).save(photos / name)
    (photos / 'bad.png').write_bytes(b'no')
    out = tmp_path / 'codes.npy'
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(photos), '--out', str(out), '--img-size', '64',
                           '--batch-size', '2', '--device', 'cpu']) == 0
    said = capsys.readouterr()
    assert '3 images (1 skipped), 16-bit codes of dath_n_16 at 64x64' in said.out and 'skipped bad.png' in said.err
    codes = np.load(out, allow_pickle=False)
    assert codes.shape == (3, 2) and codes.dtype == np.uint8
    assert (tmp_path / 'codes.ids.txt').read_text().split() == ['sub/y.png', 'x.png', 'z.jpg']
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(photos)]) == 2
    assert 'add --out codes.npy' in capsys.readouterr().err


def test_encode_precision_flag(tmp_path, capsys):
    from PIL import Image

    Image.new('RGB', (40, 30), (10, 200, 30)).save(tmp_path / 'a.png')
    args = ['--model', 'dath_n_16', '--images', str(tmp_path / 'a.png'), '--img-size', '64', '--repeats', '1']
    assert run_main(main, [*args, '--precision', 'bf16', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['precision'] == 'bf16'
    assert run_main(main, [*args, '--precision', 'fp16']) == 2
    assert 'fp16 is for CUDA' in capsys.readouterr().err


def test_a_checkpoint_encodes_at_the_size_it_was_trained_at(tmp_path, capsys):
    """Without --img-size, --checkpoint encodes at the checkpoint's recorded training size (64 here), not 224."""
    import timm
    import torch
    from PIL import Image

    from deephash_zoo.hub.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(timm.create_model('dath_n_16').eval(), tmp_path / 'checkpoint', dataset='fashion-mnist',
                           training=dict(img_size=64), card=False)
    Image.new('RGB', (40, 30), (10, 200, 30)).save(tmp_path / 'a.png')
    assert run_main(main, ['--checkpoint', str(ckpt), '--images', str(tmp_path / 'a.png'), '--out',
                           str(tmp_path / 'codes.npy'), '--device', 'cpu']) == 0
    assert '16-bit codes of dath_n_16 at 64x64' in capsys.readouterr().out


def _png(path, color=(10, 200, 30)):
    """A small image at ``path`` (folders made), for the tests below."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (40, 30), color).save(path)
    return path


@pytest.fixture
def folder_and_files(tmp_path):
    """photos/ (two images), a.png beside it, and afile: a plain file where a folder might be expected."""
    _png(tmp_path / 'photos' / 'x.png')
    _png(tmp_path / 'photos' / 'sub' / 'y.png', (200, 10, 30))
    _png(tmp_path / 'a.png')
    (tmp_path / 'afile').write_text('not a folder')
    return tmp_path


@pytest.mark.parametrize('args, message', [
    (['--images', '{t}/photos', '--out', '{t}/photos'], '--out {t}/photos names a folder'),
    (['--images', '{t}/photos', '--out', '{t}/new/'], '--out {t}/new/ names a folder'),
    (['--images', '{t}/photos', '--out', '{t}/codes.bin'], 'the codes are written as a .npy file'),
    (['--images', '{t}/photos', '--out', '{t}/afile/c.npy'], 'a file stands at {t}/afile, where a folder'),
    (['--images', '{t}/a.png', '--json-out', '{t}/afile/c.json'], 'a file stands at {t}/afile, where a folder'),
    (['--images', '{t}/a.png', '--json-out', '{t}/photos'], '--json-out {t}/photos names a folder'),
    (['--images', '{t}/photos', '--out', '{t}/old.npy'], '{t}/old.npy exists; pass --overwrite'),
    (['--images', '{t}/photos', '--out', '{t}/lone.npy'], '{t}/lone.ids.txt exists; pass --overwrite'),
    (['--images', '{t}/photos', '{t}/a.png', '--out', '{t}/c.npy'], '{t}/photos is a folder among 2 paths'),
    (['--images', '{t}/a.png', '{t}/photos'], '{t}/photos is a folder among 2 paths'),
    (['--images', '{t}/photos', '--out', '{t}/c.npy', '--json'], 'with --out the codes go to the .npy file'),
    (['--images', '{t}/photos', '--out', '{t}/c.npy', '--json-out', '{t}/c.json'], 'drop one'),
], ids=['existing-folder', 'trailing-slash', 'not-npy', 'file-as-parent', 'json-out-file-as-parent',
        'json-out-folder', 'existing-codes', 'existing-ids', 'folder-among-files', 'folder-among-files-no-out',
        'json', 'json-out'])
def test_a_bad_output_or_images_is_refused_before_the_model_loads(folder_and_files, args, message, capsys,
                                                                  monkeypatch):
    """Encoding a folder can take minutes: what can be refused without the model is refused first, in one line,
    and nothing is written."""
    from deephash_zoo.cli import encode

    t = folder_and_files
    (t / 'old.npy').write_bytes(b'old codes')
    (t / 'old.ids.txt').write_bytes(b'old ids\n')
    (t / 'lone.ids.txt').write_bytes(b'an ids file without its codes\n')
    before = sorted(p.relative_to(t) for p in t.rglob('*'))

    def must_not_load(_):
        raise AssertionError('the model was loaded before the request was checked')

    monkeypatch.setattr(encode, '_load_model', must_not_load)
    assert run_main(main, ['--model', 'dath_n_16', *[a.format(t=t) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message.format(t=t) in err and err.count('\n') == 1 and 'Traceback' not in err
    assert sorted(p.relative_to(t) for p in t.rglob('*')) == before
    assert (t / 'old.npy').read_bytes() == b'old codes'


def test_overwrite_replaces_an_existing_out(folder_and_files, capsys):
    import numpy as np

    t = folder_and_files
    args = ['--model', 'dath_n_16', '--images', str(t / 'photos'), '--out', str(t / 'c.npy'), '--img-size', '64',
            '--device', 'cpu']
    (t / 'c.npy').write_bytes(b'old codes')
    assert run_main(main, args) == 2
    assert 'c.npy exists; pass --overwrite' in capsys.readouterr().err
    assert run_main(main, [*args, '--overwrite']) == 0
    assert np.load(t / 'c.npy').shape == (2, 2)
    assert (t / 'c.ids.txt').read_text() == 'sub/y.png\nx.png\n'


@pytest.mark.parametrize('failing_fsync', [1, 2], ids=['codes', 'ids'])
def test_a_failed_write_leaves_what_was_there(folder_and_files, failing_fsync, capsys, monkeypatch):
    """A full disk while writing the codes or the ids: neither file changes (a new ids file beside old codes was
    a wrong mapping), no temporary or folder is left, and the error names the user's file."""
    import errno
    import os

    t = folder_and_files
    out = t / 'out'
    out.mkdir()
    (out / 'codes.npy').write_bytes(b'old codes')
    (out / 'codes.ids.txt').write_bytes(b'old ids\n')
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == failing_fsync:
            raise OSError(errno.ENOSPC, 'No space left on device')
        real_fsync(fd)

    monkeypatch.setattr(os, 'fsync', fsync)
    args = ['--model', 'dath_n_16', '--images', str(t / 'photos'), '--img-size', '64', '--device', 'cpu']
    assert run_main(main, [*args, '--out', str(out / 'codes.npy'), '--overwrite']) == 3
    err = capsys.readouterr().err
    named = out / ('codes.npy' if failing_fsync == 1 else 'codes.ids.txt')
    assert err.splitlines()[-1].startswith(f'error: {named}: No space left on device') and '.tmp-' not in err
    assert sorted(os.listdir(out)) == ['codes.ids.txt', 'codes.npy']
    assert (out / 'codes.npy').read_bytes() == b'old codes' and (out / 'codes.ids.txt').read_bytes() == b'old ids\n'
    calls.clear()
    assert run_main(main, [*args, '--out', str(t / 'new' / 'sub' / 'codes.npy')]) == 3
    assert not (t / 'new').exists()  # the folders made for the files go with them


def test_names_the_ids_file_cannot_hold(tmp_path, capsys):
    """The ids file has exactly one line a row: a name with a line break is skipped with a reason, a name that is
    not UTF-8 is written as its bytes on disk; the rows kept are those of the ids kept."""
    import os

    import numpy as np

    photos = tmp_path / 'photos'
    _png(photos / 'ok.png')
    _png(photos / 'two\nlines.png', (200, 10, 30))
    try:
        _png(Path(os.fsdecode(bytes(photos) + b'/caf\xe9.png')), (30, 10, 200))
    except (OSError, UnicodeError):
        pytest.skip('this filesystem takes only UTF-8 names')
    args = ['--model', 'dath_n_16', '--img-size', '64', '--device', 'cpu']
    assert run_main(main, [*args, '--images', str(photos), '--out', str(tmp_path / 'codes.npy')]) == 0
    said = capsys.readouterr()
    assert '2 images (1 skipped)' in said.out
    assert 'skipped two\\nlines.png: its name holds a line break' in said.err
    assert (tmp_path / 'codes.ids.txt').read_bytes() == b'caf\xe9.png\nok.png\n'
    codes = np.load(tmp_path / 'codes.npy')
    assert run_main(main, [*args, '--images', str(photos / 'ok.png'), '--out', str(tmp_path / 'ok.npy')]) == 0
    assert (np.load(tmp_path / 'ok.npy') == codes[1:]).all()  # ok.png's row is the one beside its id
    assert run_main(main, [*args, '--images', *map(str, sorted(photos.iterdir())), '--repeats', '1']) == 0
    assert 'caf\\udce9.png' in capsys.readouterr().out  # the table prints every name on one line
    (photos / 'ok.png').unlink()
    os.unlink(bytes(photos) + b'/caf\xe9.png')
    assert run_main(main, [*args, '--images', str(photos), '--out', str(tmp_path / 'none.npy')]) == 2
    assert 'none of the images could be written' in capsys.readouterr().err
    assert not (tmp_path / 'none.npy').exists()


def test_encode_says_where_the_weights_came_from(tiny_run, tmp_path, capsys):
    a = _png(tmp_path / 'a.png')
    assert run_main(main, ['--checkpoint', str(tiny_run[0]), '--images', str(a), '--repeats', '1']) == 0
    printed = capsys.readouterr().out
    assert f'weights of {tiny_run[0]}' in printed and 'random' not in printed
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(a), '--img-size', '64', '--repeats', '1',
                           '--seed', '3']) == 0
    assert 'random (seed 3) weights' in capsys.readouterr().out


@pytest.mark.parametrize('size', [0, -5, 62])
@pytest.mark.parametrize('out', [False, True], ids=['print', 'out'])
def test_an_img_size_the_model_cannot_take_is_refused(tmp_path, size, out, capsys):
    a = _png(tmp_path / 'a.png')
    args = ['--model', 'dath_n_16', '--images', str(a), '--img-size', str(size), '--repeats', '1']
    assert run_main(main, [*args, *(['--out', str(tmp_path / 'c.npy')] if out else [])]) == 2
    err = capsys.readouterr().err
    assert f'img_size must be an integer >= 63 for this model, got {size}' in err and err.count('\n') == 1
    assert not (tmp_path / 'c.npy').exists()


def test_a_multi_length_model_prints_its_longest_codes_as_out_writes_them(tiny_run, tmp_path, capsys):
    """Printed codes are the longest length by default, as --out writes (all lengths joined fit no index)."""
    import numpy as np

    a = _png(tmp_path / 'a.png')
    args = ['--checkpoint', str(tiny_run[0]), '--images', str(a), '--device', 'cpu', '--precision', 'fp32']
    assert run_main(main, [*args, '--repeats', '1', '--json']) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['bits'] == 16 and len(printed['codes'][0]['bits']) == 16
    assert run_main(main, [*args, '--out', str(tmp_path / 'c.npy')]) == 0
    assert '16-bit codes' in capsys.readouterr().out
    assert np.load(tmp_path / 'c.npy')[0].tobytes().hex() == printed['codes'][0]['hex']
    assert run_main(main, [*args, '--repeats', '1', '--json', '--bits', '8']) == 0
    assert len(json.loads(capsys.readouterr().out)['codes'][0]['bits']) == 8


def test_json_items_are_the_paths_given(tmp_path, capsys):
    """Two x.png in different folders stay apart in the JSON (the base name alone told them apart from nothing)."""
    first, second = _png(tmp_path / 'a' / 'x.png'), _png(tmp_path / 'b' / 'x.png', (200, 10, 30))
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(first), str(second), '--img-size', '64',
                           '--repeats', '1', '--json']) == 0
    assert [r['item'] for r in json.loads(capsys.readouterr().out)['codes']] == [str(first), str(second)]


def test_every_skipped_file_is_counted_and_a_dangling_link_is_named(tmp_path, capsys):
    """Six skipped files printed five and no word of the sixth; a link to nowhere was dropped unseen."""
    from PIL import Image

    photos = tmp_path / 'photos'
    photos.mkdir()
    Image.new('RGB', (40, 30), (10, 200, 30)).save(photos / 'good.png')
    for i in range(6):
        (photos / f'bad{i}.png').write_bytes(b'no')
    (photos / 'gone.png').symlink_to(tmp_path / 'nowhere.png')
    out = tmp_path / 'codes.npy'
    assert run_main(main, ['--model', 'dath_n_16', '--images', str(photos), '--out', str(out), '--img-size', '64',
                           '--device', 'cpu']) == 0
    said = capsys.readouterr()
    assert '1 images (7 skipped)' in said.out
    assert said.err.count('skipped bad') == 5 and '... and 2 more skipped' in said.err
    from deephash_zoo.retrieval.folder import list_images

    assert [p.name for p in list_images(photos)][-2:] == ['gone.png', 'good.png']
