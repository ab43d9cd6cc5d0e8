"""Keep freed tensor memory in the process, so a CPU training step reuses it instead of faulting it in again.

glibc's malloc serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back with ``munmap`` when freed. A training step of these models frees and allocates blocks far above that every
step (fc6 alone is 151 MB of weights, and its gradient, momentum and batch activations as much again), so every
step the kernel maps them anew and zeroes each 4 KB page on first touch. With glibc's mmap use off and a high trim
threshold, freed blocks stay in the heap and the next step takes them back without a page fault. On a 2-core
Intel Xeon, system time went from 29% of the training benchmark's CPU time to 6% and the trainer's steady
images/s with the paper recipe rose 1.75x (the README's "Freed memory kept" names the commands).

The cost: a process keeps the memory of its largest step until it exits (up to :data:`TRIM_THRESHOLD` more
than it would otherwise), which is what a training process holds anyway. Only processes that own their lifetime
call this: the training command lines and the test suite, never the library on import.
"""
import ctypes
import os
import sys
from typing import Dict

__all__ = ['ENVIRONMENT', 'TRIM_THRESHOLD', 'keep_freed_memory', 'malloc_environment', 'user_tuned_malloc']

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h> parameter numbers
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # free memory at the heap's top beyond this goes back to the kernel (mallopt's int)
# the same settings for the processes this one starts (data-loader and DDP workers, a test's command line):
# glibc reads these when a process starts
ENVIRONMENT: Dict[str, str] = {'MALLOC_MMAP_MAX_': '0', 'MALLOC_TRIM_THRESHOLD_': str(TRIM_THRESHOLD)}


def malloc_environment() -> Dict[str, str]:
    """The environment variables that set this process's malloc when it started: glibc's ``MALLOC_*_``, a
    ``GLIBC_TUNABLES`` holding a ``glibc.malloc`` tunable, and ``LD_PRELOAD`` (jemalloc, tcmalloc)."""
    return {k: v for k, v in os.environ.items()
            if (k.startswith('MALLOC_') and k.endswith('_')) or (k == 'GLIBC_TUNABLES' and 'glibc.malloc' in v)
            or (k == 'LD_PRELOAD' and v)}


def user_tuned_malloc() -> bool:
    """Whether :func:`malloc_environment` holds settings other than :data:`ENVIRONMENT`: then the user's choice
    stands. The settings of a parent process that called :func:`keep_freed_memory` are not the user's."""
    settings = malloc_environment()
    return bool(settings) and settings != ENVIRONMENT


def keep_freed_memory(children: bool = True) -> bool:
    """Turn off glibc's per-block mmap for this process (and, with ``children``, for the processes it starts).

    Returns whether the setting is in force: False off Linux/glibc (nothing to do there) and where the user
    chose their own malloc settings or allocator (:func:`user_tuned_malloc`), which are left as they are."""
    if not sys.platform.startswith('linux') or user_tuned_malloc():
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not (hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt')):
        return False  # not glibc: musl's mallopt, for one, accepts every setting and ignores it
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False
    if children:
        os.environ.update(ENVIRONMENT)
    return True
