"""The suite's own disk use: a passing module leaves no files behind, and a disk too full to hold the
suite's checkpoints stops the session at once with one message (tests/conftest.py, pyproject.toml)."""
import os
import subprocess
import sys
from pathlib import Path

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
