"""Small helpers several modules share: atomic writes, file digests, a description of the machine."""
import hashlib
import json
import os
import platform
import shutil
import uuid
from pathlib import Path
from typing import Any, List, Union

__all__ = ['file_sha256', 'cpu_model', 'usable_cores', 'load_average', 'write_atomic', 'replace_dir', 'read_json']


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and rename it over ``path``: readers never see half a file."""
    tmp = path.with_name(f'.{path.name}.tmp-{uuid.uuid4().hex[:8]}')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Union[str, Path], missing: str) -> Any:
    """The parsed JSON file at ``path``; one-line errors naming it: ``missing`` says what writes the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f'{path}: {missing}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from e


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there, never leaving neither."""
    if final.exists():
        old = final.with_name(f'.{final.name}.old-{uuid.uuid4().hex[:8]}')
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


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


def load_average() -> List[str]:
    """The 1, 5 and 15 minute load averages as /proc/loadavg writes them (empty where there is none):
    benchmark tables print them, since this kind of machine is shared."""
    try:
        return Path('/proc/loadavg').read_text().split()[:3]
    except OSError:
        return []
