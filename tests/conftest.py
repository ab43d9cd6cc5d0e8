"""Fixtures several test modules share: a tiny checkpoint (random weights, saved in a run folder) and a
Fashion-MNIST index built from it, each made once per session."""
import pytest
import timm
import torch

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.hub.checkpoint import save_checkpoint
from tests.test_data_fashion_mnist import HAS_FMNIST

TINY_IMG = 64
TINY_NDB = 120  # database items in the tiny index


def tiny_model(arch: str = 'dath_n_16', bits=(8, 16), seed: int = 0) -> torch.nn.Module:
    """A randomly initialised model with the given code lengths (no training: tests need codes, not quality)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch)
    if tuple(bits) != tuple(model.bits):
        model.reset_classifier(sum(bits), bits=bits)
    return model.eval()


def save_tiny(model: torch.nn.Module, run_dir):
    """Save ``model`` as ``run_dir/checkpoint``, recorded as trained on Fashion-MNIST at 64x64."""
    training = dict(img_size=TINY_IMG, seed=0, data='fashion-mnist', data_root=None)
    return save_checkpoint(model, run_dir / 'checkpoint', dataset='fashion-mnist', training=training)


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
    """A training-run folder holding a two-length (8, 16) dath_n_16 checkpoint 'trained' at 64x64."""
    path = tmp_path_factory.mktemp('run')
    model = tiny_model()
    save_tiny(model, path)
    return path, model


@pytest.fixture(scope='session')
def tiny_index(tiny_run, tmp_path_factory):
    """A flat 16-bit index of 120 Fashion-MNIST training images, built by ``deephash-index build``."""
    if not HAS_FMNIST:
        pytest.skip('dataset-fashion-mnist not installed (.ci/setup.sh)')
    pytest.importorskip('faiss')
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.cli.index import main as index_main

    out = tmp_path_factory.mktemp('idx') / 'index'
    assert run_main(index_main, ['build', '--checkpoint', str(tiny_run[0]), '--bits', '16', '--db-subset',
                                 str(TINY_NDB), '--out', str(out), '--no-progress']) == 0
    return out
