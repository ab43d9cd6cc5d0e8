"""The Fashion-MNIST idx reader on the real files and on broken ones."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from deephash_zoo.data import DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist, read_idx

HAS_FMNIST = (DEFAULT_FASHION_MNIST_DIR / 't10k-images-idx3-ubyte.gz').is_file()


def _idx(shape, payload: bytes) -> bytes:
    header = bytes([0, 0, 0x08, len(shape)]) + b''.join(int(d).to_bytes(4, 'big') for d in shape)
    return header + payload


def _write_split(root: Path, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    opener = gzip.open if gz else open
    suffix = '.gz' if gz else ''
    with opener(root / f't10k-images-idx3-ubyte{suffix}', 'wb') as f:
        f.write(_idx(images.shape, images.tobytes()))
    with opener(root / f't10k-labels-idx1-ubyte{suffix}', 'wb') as f:
        f.write(_idx(labels.shape, labels.tobytes()))


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh installs it)')
def test_real_files_load_as_uint8():
    images, labels = load_fashion_mnist('test')
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert labels[:3].tolist() == [9, 2, 1]  # the published order: ankle boot, pullover, trouser


@pytest.mark.parametrize('gz', [True, False])
def test_any_folder_gz_or_plain(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 3, 9, 1, 1], dtype=np.uint8)
    _write_split(tmp_path, images, labels, gz=gz)
    got_images, got_labels = load_fashion_mnist('test', tmp_path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [0, 3, 9, 1, 1]


def test_a_file_read_once_is_read_again_when_it_changes_and_cannot_be_changed_in_memory(tmp_path):
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    _write_split(tmp_path, first, np.array([1, 2, 3, 4], dtype=np.uint8), gz=False)
    images, _ = load_fashion_mnist('test', tmp_path)
    assert load_fashion_mnist('test', tmp_path)[0] is images  # inflated once
    with pytest.raises(ValueError, match='read-only'):
        images[0, 0, 0] = 1
    second = 255 - first  # same size, rewritten at once: only the content changes
    _write_split(tmp_path, second, np.array([4, 3, 2, 1], dtype=np.uint8), gz=False)
    again, labels = load_fashion_mnist('test', tmp_path)
    np.testing.assert_array_equal(again, second)
    assert labels.tolist() == [4, 3, 2, 1]
    (tmp_path / 't10k-labels-idx1-ubyte').write_bytes(b'\x00\x00\x0d\x01' + b'\0' * 8)
    with pytest.raises(ValueError, match='bad magic number'):  # a file broken after a good read is refused
        load_fashion_mnist('test', tmp_path)


def test_missing_truncated_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='t10k-images-idx3-ubyte.gz: Fashion-MNIST file not found'):
        load_fashion_mnist('test', tmp_path)
    truncated = tmp_path / 'short.gz'
    with gzip.open(truncated, 'wb') as f:
        f.write(_idx((5, 28, 28), b'\0' * 100))
    with pytest.raises(ValueError, match=r'short.gz: truncated or padded idx data: header says \(5, 28, 28\)'):
        read_idx(truncated)
    cut_gzip = tmp_path / 'cut.gz'
    cut_gzip.write_bytes(truncated.read_bytes()[:20])
    with pytest.raises(ValueError, match='cut.gz: unreadable idx file'):
        read_idx(cut_gzip)
    bad_magic = tmp_path / 'magic'
    bad_magic.write_bytes(b'\x00\x00\x0d\x01' + b'\0' * 8)
    with pytest.raises(ValueError, match='bad magic number'):
        read_idx(bad_magic)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_fashion_mnist('val', tmp_path)


def test_off_debian_the_default_names_the_download_and_uses_a_torchvision_copy(tmp_path, monkeypatch):
    """No Debian files: one line naming DEEPHASH_ALLOW_DOWNLOAD; a copy in torchvision's layout under the cache is
    used (no download: tests never reach the network) and torchvision itself reads the same files."""
    from deephash_zoo.data import fashion_mnist

    monkeypatch.setattr(fashion_mnist, 'DEFAULT_FASHION_MNIST_DIR', tmp_path / 'no-debian')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    monkeypatch.delenv(fashion_mnist.DOWNLOAD_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match='set DEEPHASH_ALLOW_DOWNLOAD=1 to download it with torchvision into '
                                                f'{tmp_path}/cache/deephash-zoo/fashion-mnist'):
        load_fashion_mnist('test')
    raw = fashion_mnist.download_dir() / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    _write_split(raw, images, labels, gz=False)  # torchvision keeps the extracted files
    for kind, array in (('images-idx3', images), ('labels-idx1', labels)):  # and wants the train pair too
        (raw / f'train-{kind}-ubyte').write_bytes(_idx(array.shape, array.tobytes()))
    got_images, got_labels = load_fashion_mnist('test')
    assert np.array_equal(got_images, images) and list(got_labels) == [9, 0, 4]
    from torchvision.datasets import FashionMNIST

    theirs = FashionMNIST(str(fashion_mnist.download_dir()), train=False, download=False)
    assert np.array_equal(theirs.data.numpy(), images) and theirs.targets.tolist() == [9, 0, 4]
