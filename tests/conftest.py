"""Fixtures several test modules share: a tiny checkpoint (random weights, saved in a run folder) and a
Fashion-MNIST index built from it, each made once per session, and folders for one module's shared files."""
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest
import timm
import torch

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.hub.checkpoint import save_checkpoint
from deephash_zoo.retrieval import kernels
from deephash_zoo.training.allocator import keep_freed_memory
from deephash_zoo.utils import usable_cores
from tests.test_data_fashion_mnist import HAS_FMNIST

TINY_IMG = 64
TINY_NDB = 120  # database items in the tiny index
# The most the suite holds on disk at once, with room to spare: 1,656 MiB measured over a whole run (df sampled
# every 0.5 s), mostly the SIGKILL-resume test's train state and weights and their next copy before the rename.
DISK_NEEDED_GIB = float(os.environ.get('DEEPHASH_TEST_DISK_GIB', '2'))


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker gets its share of the cores, for torch and numba here and for the processes
    its tests start: two workers of two threads each would put four threads on two cores."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = max(1, usable_cores() // workers)
        os.environ['OMP_NUM_THREADS'] = str(threads)
        if kernels.available():  # first: numba starting its threads sets the OpenMP count torch shares
            kernels.numba.set_num_threads(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_workers()
# Before xdist starts its workers, so they and every process a test starts inherit it: the suite builds and
# trains hundreds of models, and glibc's default maps and zeroes their fc6/fc7 blocks anew each time.
keep_freed_memory()


def _temp_root(config: pytest.Config) -> Path:
    """Where pytest puts tmp_path folders: --basetemp, else $PYTEST_DEBUG_TEMPROOT, else the system's temp dir."""
    root = Path(config.option.basetemp or os.environ.get('PYTEST_DEBUG_TEMPROOT') or tempfile.gettempdir())
    while not root.exists():
        root = root.parent
    return root


def pytest_report_header(config: pytest.Config) -> str:
    root = _temp_root(config)
    return f'temp folders in {root}: {shutil.disk_usage(root).free / 2**30:.1f} GiB free'


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, saying why, where the disk cannot hold the suite's checkpoints (rather than dozens of
    'No space left on device' errors from deep inside torch and onnx, as a nearly full CI disk once gave)."""
    root = _temp_root(session.config)
    free = shutil.disk_usage(root).free / 2**30
    if free < DISK_NEEDED_GIB:
        pytest.exit(f'only {free:.1f} GiB free in {root}; the test suite needs {DISK_NEEDED_GIB:g} GiB there for '
                    'the checkpoints it writes: free some space, or pass --basetemp on a larger disk', returncode=1)


# Modules handed out first: timm's model suite is one test of 3-4 minutes on one core (a worker's share), on a
# 2-core Intel Xeon. xdist's default order (most tests first) put it last, where it ran alone beside an idle
# worker for a third of the suite's wall time; first, it runs beside the other worker's modules.
FIRST_MODULES = ('test_timm_suite.py',)


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Test order for ``--dist loadscope --no-loadscope-reorder`` (the README command): the modules in
    ``FIRST_MODULES``, then the rest by their number of tests, most first (xdist's own default order); a
    module's tests keep their order."""
    counts = Counter(item.path for item in items)
    items.sort(key=lambda item: (item.path.name not in FIRST_MODULES, -counts[item.path]))


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


class ModuleTempFolders:
    """``tmp_path_factory.mktemp`` for one test module, whose folders go when the module's tests are done.

    Why: a module-scoped fixture's checkpoint (about 220 MB) would otherwise stay on disk until the whole
    session ends, and a CI machine's disk may have only a few GB to spare.
    """

    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


@pytest.fixture(scope='module')
def module_tmp(request, tmp_path_factory) -> Iterator[ModuleTempFolders]:
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit('.', 1)[-1])
    yield ModuleTempFolders(root)
    shutil.rmtree(root, ignore_errors=True)


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
