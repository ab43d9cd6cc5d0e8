"""The suite's own resources: a passing module leaves no files behind, a disk too full to hold the suite's
checkpoints stops the session at once with one message, and each pytest-xdist worker runs on its share of the
cores (tests/conftest.py, pyproject.toml)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deephash_zoo.retrieval import kernels
from deephash_zoo.retrieval.metrics import mean_average_precision
from deephash_zoo.utils import usable_cores

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *args]
    return subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **env), capture_output=True, text=True, timeout=300)


def test_a_passing_module_leaves_no_files(tmp_path):
    base = tmp_path / 'base'
    # its module fixture saves a 220 MB checkpoint, and each test writes into its own tmp_path
    done = _pytest('tests/test_hub_card.py', '--basetemp', str(base))
    assert done.returncode == 0, done.stdout[-3000:]
    assert [p for p in base.rglob('*') if not p.is_dir()] == []


def test_too_little_disk_stops_the_session_saying_why():
    done = _pytest('tests/test_losses.py', DEEPHASH_TEST_DISK_GIB='1e6')
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert 'GiB free in' in out and 'the test suite needs 1e+06 GiB there' in out and '--basetemp' in out, out
    assert 'passed' not in out and 'Traceback' not in out, out


def test_an_xdist_worker_runs_on_its_share_of_the_cores():
    """The README's command runs two workers: each (and what its tests start) gets half the cores, still after
    the compiled metrics kernel has run in this worker (numba's threads once reset torch's count to theirs)."""
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers == 1:
        pytest.skip('not run under pytest-xdist (the README command: -n 2)')
    share = max(1, usable_cores() // workers)
    q = np.where(np.random.default_rng(0).random((40, 16)) < 0.5, -1, 1).astype(np.int8)
    mean_average_precision(q, q, np.arange(40) % 4, np.arange(40) % 4)
    assert torch.get_num_threads() == share and os.environ['OMP_NUM_THREADS'] == str(share)
    if kernels.available():
        assert kernels.numba.get_num_threads() == share


def test_timms_suite_is_handed_out_first_by_the_readme_command():
    """The README's command keeps the collection order (``--no-loadscope-reorder``), and that order starts with
    the minutes-long timm suite, then the other modules whole, most tests first (tests/conftest.py)."""
    readme_command = (ROOT / '.ci' / 'run').read_text().strip().splitlines()[-1]
    assert '--dist loadscope --no-loadscope-reorder' in readme_command
    assert f'\n{readme_command}\n' in (ROOT / 'README.md').read_text()
    done = _pytest('--collect-only')
    assert done.returncode == 0, done.stdout[-3000:]
    modules = [line.split('::')[0] for line in done.stdout.splitlines() if line.startswith('tests/')]
    order = list(dict.fromkeys(modules))
    assert order[0] == 'tests/test_timm_suite.py', order[:3]
    runs = [m for i, m in enumerate(modules) if i == 0 or modules[i - 1] != m]
    assert runs == order, 'a module is split'
    counts = [modules.count(m) for m in order[1:]]
    assert counts == sorted(counts, reverse=True) and len(order) > 20, list(zip(order[1:], counts, strict=True))
