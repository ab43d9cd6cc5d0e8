"""keep_freed_memory: a freed 64 MB tensor is taken back from the heap, not faulted in again, in the process that
asked and in the processes it starts; a user's own malloc settings stand."""
import importlib
import json
import os
import subprocess
import sys

import pytest

from deephash_zoo.training.allocator import ENVIRONMENT, malloc_environment, user_tuned_malloc

BLOCK_PAGES = (64 << 20) // 4096  # the 64 MB tensor's 4 KB pages
ROUNDS = 12

# malloc, fill and free a 64 MB block ROUNDS times (through ctypes: what torch's CPU allocator does for a tensor);
# print whether keep_freed_memory applied, the rounds' minor page faults, and those of a child process that does
# the same without calling anything. Only the processes that call keep_freed_memory import the package (and torch).
SCRIPT = f"""
import ctypes, json, resource, subprocess, sys

def rounds():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        block = libc.malloc(64 << 20)
        ctypes.memset(block, 1, 64 << 20)
        libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

if sys.argv[1] == 'child':
    print(rounds())
    sys.exit()
applied = None
if sys.argv[1] == 'keep':
    from deephash_zoo.training.allocator import keep_freed_memory
    applied = keep_freed_memory()
faults = rounds()
child = int(subprocess.run([sys.executable, '-c', sys.argv[2], 'child'], capture_output=True, text=True,
                           check=True).stdout)
print(json.dumps(dict(applied=applied, faults=faults, child=child)))
"""


def _run(mode: str, env_extra: dict) -> dict:
    ours = malloc_environment()  # the suite keeps freed memory too
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(env_extra)
    out = subprocess.run([sys.executable, '-c', SCRIPT, mode, SCRIPT], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc settings: Linux only')


def test_a_freed_block_is_reused_without_page_faults_here_and_in_child_processes():
    default = _run('default', {})
    kept = _run('keep', {})
    # glibc's default: every round maps the block anew, so every page faults every round
    assert default['faults'] >= 0.9 * ROUNDS * BLOCK_PAGES and default['child'] >= 0.9 * ROUNDS * BLOCK_PAGES
    # kept: the first round faults the block in, the rest take it back from the heap (measured: one block's worth)
    assert kept['applied'] is True
    assert kept['faults'] <= 2 * BLOCK_PAGES and kept['child'] <= 2 * BLOCK_PAGES


def test_a_users_own_malloc_settings_stand():
    mine = _run('keep', {'MALLOC_MMAP_MAX_': '65536'})
    assert mine['applied'] is False and mine['faults'] >= 0.9 * ROUNDS * BLOCK_PAGES


def test_user_tuned_malloc_reads_the_environment(monkeypatch):
    for k in [k for k in os.environ if k.startswith('MALLOC_')] + ['GLIBC_TUNABLES', 'LD_PRELOAD']:
        monkeypatch.delenv(k, raising=False)
    assert not user_tuned_malloc()
    for key, value in [*ENVIRONMENT.items(), ('GLIBC_TUNABLES', 'glibc.malloc.mmap_max=0'),
                       ('LD_PRELOAD', '/usr/lib/libjemalloc.so.2')]:
        monkeypatch.setenv(key, value)
        assert user_tuned_malloc(), key
        monkeypatch.delenv(key)
    monkeypatch.setenv('GLIBC_TUNABLES', 'glibc.pthread.rseq=0')
    assert not user_tuned_malloc()
    for key, value in ENVIRONMENT.items():  # inherited from a parent that kept freed memory: not the user's
        monkeypatch.setenv(key, value)
    assert not user_tuned_malloc()


@pytest.mark.parametrize('command', ['train', 'pretrain', 'experiment', 'zoo'])
def test_the_training_commands_keep_freed_memory_before_they_run(command, monkeypatch):
    module = importlib.import_module(f'deephash_zoo.cli.{command}')
    calls = []
    monkeypatch.setattr(module, 'keep_freed_memory', lambda: calls.append('keep') or True)
    monkeypatch.setattr(module, 'main', lambda argv=None: calls.append('main') or 0)
    with pytest.raises(SystemExit) as exited:
        module.cli()
    assert exited.value.code == 0 and calls == ['keep', 'main']
