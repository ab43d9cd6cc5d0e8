"""CIFAR-10's binary version and the field's three protocols, on small files written here in that format."""
import numpy as np
import pytest

from deephash_zoo.data import CIFAR10_PROTOCOLS, build_retrieval_data, cifar10_split, read_cifar10
from deephash_zoo.data.cifar10 import BATCH_FILES


def _write_batches(folder, per_file: int = 20, seed: int = 0):
    """Six files of ``per_file`` records (label byte + R, G, B planes); returns the images and labels written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for name in BATCH_FILES:
        lab = rng.integers(0, 10, per_file).astype(np.uint8)
        img = rng.integers(0, 256, (per_file, 32, 32, 3), dtype=np.uint8)
        planes = img.transpose(0, 3, 1, 2).reshape(per_file, -1)
        (folder / name).write_bytes(np.concatenate([lab[:, None], planes], axis=1).tobytes())
        images.append(img)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def test_reads_the_binary_version_pixel_for_pixel(tmp_path):
    images, labels = _write_batches(tmp_path / 'cifar-10-batches-bin')
    got_images, got_labels = read_cifar10(tmp_path)  # the parent folder works too
    assert got_images.shape == (120, 32, 32, 3) and got_images.dtype == np.uint8
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='not the CIFAR-10 binary version'):
        read_cifar10(tmp_path)
    _write_batches(tmp_path)
    (tmp_path / 'test_batch.bin').write_bytes(b'\0' * 100)
    with pytest.raises(ValueError, match=r'test_batch\.bin: 100 bytes is not a whole number'):
        read_cifar10(tmp_path)
    (tmp_path / 'test_batch.bin').write_bytes(bytes([12]) + bytes(3072))
    with pytest.raises(ValueError, match='label 12 outside 0..9'):
        read_cifar10(tmp_path)


@pytest.mark.parametrize('protocol, sizes', [('cifar10', (1000, 5000, 54000)), ('cifar10-1', (1000, 5000, 59000)),
                                             ('cifar10-2', (10000, 50000, 50000))])
def test_protocol_counts_are_the_fields(protocol, sizes):
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 6000))  # 6,000 images per class
    split = cifar10_split(labels, protocol, seed=0)
    assert tuple(len(split[k]) for k in ('query', 'train', 'database')) == sizes
    assert not np.intersect1d(split['query'], split['database']).size
    assert np.all(np.bincount(labels[split['query']], minlength=10) == sizes[0] // 10)  # per class
    assert set(CIFAR10_PROTOCOLS) == {'cifar10', 'cifar10-1', 'cifar10-2'}
    again = cifar10_split(labels, protocol, seed=0)
    assert all(np.array_equal(split[k], again[k]) for k in split)  # deterministic by seed


def test_build_retrieval_data_names_what_a_small_folder_lacks(tmp_path):
    _write_batches(tmp_path)
    with pytest.raises(ValueError, match=r'cifar10-1 draws 600 images of each class; class \d'):
        build_retrieval_data(f'cifar10-1:{tmp_path}')
    with pytest.raises(ValueError, match='the protocols fix the query and training counts'):
        build_retrieval_data(f'cifar10:{tmp_path}', num_query=10)
    with pytest.raises(ValueError, match="sets protocol 'cifar10-2'"):
        build_retrieval_data(f'cifar10-2:{tmp_path}', protocol='cifar10')
