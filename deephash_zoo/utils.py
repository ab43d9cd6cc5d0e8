"""Small helpers several modules share: file digests and a description of the machine."""
import hashlib
import os
import platform
from pathlib import Path
from typing import Union

__all__ = ['file_sha256', 'cpu_model', 'usable_cores']


def file_sha256(path: Union[str, Path]) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def cpu_model() -> str:
    """The CPU's model name (benchmark headers)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
