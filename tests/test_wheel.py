"""The built wheel works without the source tree: the card template ships inside the package."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import deephash_zoo
from deephash_zoo.hub.checkpoint import save_checkpoint

ROOT = Path(deephash_zoo.__file__).resolve().parents[1]


def _run(args, cwd, env=None):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_wheel_renders_cards_and_dry_runs_a_push_without_the_source_tree(tmp_path):
    src = tmp_path / 'src'  # a copy, so that building leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in ('pyproject.toml', 'README.md'):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / 'deephash_zoo', src / 'deephash_zoo', ignore=shutil.ignore_patterns('__pycache__'))
    _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', str(tmp_path / 'dist'),
          str(src)], cwd=tmp_path)
    wheel = next((tmp_path / 'dist').glob('deephash_zoo-*.whl'))
    site = tmp_path / 'site'
    _run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', str(site), str(wheel)], cwd=tmp_path)
    assert (site / 'deephash_zoo' / 'hub' / 'card_template.md').is_file()

    torch.manual_seed(0)
    ckpt = save_checkpoint(timm.create_model('dath_n_16'), tmp_path / 'ckpt', dataset='fashion-mnist',
                           training=dict(img_size=64, epochs=1), card=False)
    away = tmp_path / 'elsewhere'  # no source tree below or above the working directory
    away.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE='1')
    where = _run([sys.executable, '-c', 'import deephash_zoo; print(deephash_zoo.__file__)'], away, env)
    assert where.strip().startswith(str(site)), where  # the wheel's copy, not the checkout
    _run([sys.executable, '-m', 'deephash_zoo.cli.card', '--checkpoint', str(ckpt), '--out', str(away / 'card.md')],
         away, env)
    card = (away / 'card.md').read_text()
    assert card.startswith('---\n') and 'pip install deephash-zoo' in card and '## Limitations' in card
    out = _run([sys.executable, '-m', 'deephash_zoo.cli.push', '--checkpoint', str(ckpt), '--repo-id',
                'someone/dath_n_16.fmnist', '--dry-run', '--out', str(away / 'upload')], away, env)
    assert 'README.md' in out and (away / 'upload' / 'README.md').is_file()
