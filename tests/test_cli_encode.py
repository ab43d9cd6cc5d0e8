"""The README's main command: deephash-encode on Fashion-MNIST, and its one-line errors."""
import json

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
