"""Small helpers several modules share: atomic writes, file digests, a description of the machine."""
import ctypes
import datetime
import errno
import hashlib
import json
import os
import platform
import shlex
import shutil
import sys
import uuid
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = ['file_sha256', 'state_sha256', 'tensors_file_sha256', 'cpu_model', 'usable_cores', 'load_average',
           'write_atomic', 'write_temporary', 'replace_dir', 'restore_dir', 'temporary_name', 'remove_dead_temporaries',
           'non_finite_tensors', 'read_json', 'file_in_the_way', 'provenance', 'safetensors_bytes', 'run_machine',
           'package_version', 'checked_device']


def file_in_the_way(path: Union[str, Path]) -> Optional[Path]:
    """The file standing where one of ``path``'s parent folders would go (None: the folders exist or can be made).
    Output paths are checked with it before minutes of work, which mkdir would only then refuse (errno 17 / 20)."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def write_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a hidden temporary sibling of ``path``, on disk (fsync), for the caller to rename over ``path``
    once every file it writes is whole; a failure removes it."""
    tmp = path.with_name(f'.{path.name}.tmp-{uuid.uuid4().hex[:8]}')
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling and rename it over ``path``: readers never see half a file."""
    tmp = write_temporary(path, data)
    try:
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


def read_jsonl(path: Union[str, Path]) -> List[Any]:
    """The records of a JSON-lines file that a resumable run appends to (none when it does not exist yet); a line
    that does not parse (a record cut short when the run was killed) is a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}, line {number}: not a JSON record ({e}); delete that line to run '
                                 'its step again') from None
    return records


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform or file system cannot."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    if not done and ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSUP):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(b))
    return done


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there.

    ``final`` holds one whole version at every instant: the old and new folders are swapped in one atomic
    step where Linux allows it (then the old one is removed). Elsewhere the old folder is first renamed to a
    hidden sibling, and :func:`restore_dir` puts it back if a process dies between the two renames.
    """
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
        return
    old = final.with_name(f'.{final.name}.old-{uuid.uuid4().hex[:8]}')
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(final: Path) -> bool:
    """Put back the old version of ``final`` that :func:`replace_dir`'s two-rename fallback set aside, when a
    process died before the new one took its place; True when it did."""
    final = Path(final)
    olds = sorted(final.parent.glob(f'.{final.name}.old-*'), key=lambda p: p.stat().st_mtime)
    if final.exists() or not olds:
        return False
    os.replace(olds[-1], final)
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def temporary_name(prefix: str) -> str:
    """``PREFIX<pid>-<random>``: a temporary's name that says which process writes it (see below)."""
    return f'{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}'


def remove_dead_temporaries(folder: Path, prefix: str) -> List[str]:
    """Remove the ``PREFIX<pid>-*`` entries in ``folder`` whose process is gone (killed mid-write) and returns
    their names; those of a live process (another writer, or this one) are left alone."""
    removed = []
    for path in sorted(Path(folder).glob(f'{glob_escape(prefix)}*')):
        pid = path.name[len(prefix):].split('-')[0]
        if pid.isdigit() and (int(pid) == os.getpid() or _process_alive(int(pid))):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def non_finite_tensors(tensors: Mapping[str, Any]) -> List[str]:
    """Names of the floating-point tensors in ``tensors`` that hold NaN or infinity (weights never to be saved
    or served).

    Why min and max: NaN propagates into both and an infinity is one of them, so one reduction pass answers
    without the full boolean mask ``isfinite(t)`` allocates (one 37.7M-element fc6 weight, 1 thread: 0.26 s
    against 0.02 s, paid on every save and load)."""
    import torch

    def finite(t: 'torch.Tensor') -> bool:
        if t.numel() == 0:
            return True
        low, high = torch.aminmax(t.detach())
        return bool(torch.isfinite(low) & torch.isfinite(high))

    return [name for name, t in tensors.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not finite(t)]


def file_sha256(path: Union[str, Path]) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights files are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def state_sha256(state: Mapping[str, Any]) -> str:
    """sha256 over named tensors (sorted names, dtype, shape, raw bytes): identifies weights, in memory or on disk."""
    import torch

    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        t = value.detach().cpu().contiguous()
        h.update(f'{key}|{t.dtype}|{tuple(t.shape)}|'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def tensors_file_sha256(path: Union[str, Path]) -> str:
    """:func:`state_sha256` of a safetensors file's tensors. Unlike :func:`file_sha256` it ignores the header's
    metadata, which safetensors writes in no fixed order: the same weights saved twice give the same digest."""
    from safetensors.torch import load_file

    return state_sha256(load_file(str(path)))


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


def provenance(module: str, argv: Optional[Sequence[str]] = None) -> Dict[str, str]:
    """When a benchmark record was made and the command that remakes it (``python -m MODULE ARGS``; the
    process's own arguments when ``argv`` is None): a figure quoted from the record can name both."""
    args = list(sys.argv[1:] if argv is None else argv)
    return dict(generated=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
                command=' '.join(['python -m', module] + [shlex.quote(a) for a in args]))


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> bytes:
    """``safetensors.torch.save`` with its metadata in sorted order: the same tensors and metadata give the same
    bytes, so the same sha256, in every process (safetensors writes the metadata in a per-process random order,
    and a trunk's file digest is what decides whether the zoo's later stages share it)."""
    import struct

    from safetensors.torch import save

    blob = save(dict(tensors), metadata=dict(metadata) if metadata else None)
    (size,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + size])
    if '__metadata__' in header:
        header['__metadata__'] = dict(sorted(header['__metadata__'].items()))
    text = json.dumps(header, separators=(',', ':')).encode()
    if len(text) > size:  # never seen: the reordered header is the same characters; keep safetensors' own
        return blob
    return blob[:8] + text.ljust(size) + blob[8 + size:]


def package_version() -> str:
    """deephash-zoo's installed version ('0.0.0+source' from a source tree that is not installed): the package's
    ``__version__``, here so that modules it imports can record it without importing the package."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version('deephash-zoo')
    except PackageNotFoundError:
        return '0.0.0+source'


def run_machine(device: Any = 'cpu') -> Dict[str, str]:
    """The machine a training or evaluation ran on, as its record keeps it (cards name it beside the numbers):
    the CPU model, the device (a GPU's name), and the versions that computed them."""
    import timm
    import torch

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' and torch.cuda.is_available() else dev.type
    return dict(cpu=cpu_model(), cores=str(usable_cores()), device=name, torch=torch.__version__,
                timm=timm.__version__, deephash_zoo=package_version())


def checked_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` ('auto': CUDA where there is one, else the CPU), or a one-line ValueError
    for a name torch does not know ('gpu') or a device this machine lacks ('cuda' with no CUDA device, 'cuda:3'
    with two): torch's own errors came from deep inside (NVIDIA driver messages) or not at all."""
    import torch

    if isinstance(device, str) and device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f'device {device!r}: not a device name torch knows (cpu, cuda, cuda:N, mps, or auto)') \
            from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {device!r}: no CUDA device is available on this machine')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    if dev.type == 'mps' and not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
        raise ValueError(f'device {device!r}: no MPS device is available on this machine')
    return dev
