"""HashDataset, the list-file and COCO loaders, the mosaic benchmark and the retrieval protocols."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_transform

from deephash_zoo.data import (
    DEFAULT_FASHION_MNIST_DIR,
    PROTOCOLS,
    HashDataset,
    build_retrieval_data,
    compose_mosaic,
    load_coco,
    load_list_file,
    make_mosaic,
    mosaic_indices,
    split_protocol,
)
from deephash_zoo.data.mosaic import quadrant_labels

_FMNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
HAS_FMNIST = all((DEFAULT_FASHION_MNIST_DIR / f).is_file() or (DEFAULT_FASHION_MNIST_DIR / f'{f}.gz').is_file()
                 for f in _FMNIST_FILES)
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason=f'Fashion-MNIST idx files not in {DEFAULT_FASHION_MNIST_DIR} (apt-get install '
                           'dataset-fashion-mnist, or set FASHION_MNIST_DIR)')


def _small_transform():
    return create_transform(input_size=(3, 64, 64), interpolation='bilinear', crop_pct=1.0)


def _write_images(root: Path, n: int, rgb: bool = True) -> list:
    """``n`` small PNGs under ``root/img``; returns their pixel arrays."""
    (root / 'img').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = []
    for i in range(n):
        arr = rng.integers(0, 256, (6, 5, 3) if rgb else (6, 5), dtype=np.uint8)
        Image.fromarray(arr).save(root / 'img' / f'{i}.png')
        arrays.append(arr)
    return arrays


def _line_error(path: Path, line: int, message: str) -> str:
    return re.escape(f'{path.name}:{line}: ') + message


# ------------------------------------------------------------------------------------------------ HashDataset
def test_in_memory_grayscale_without_transform():
    images = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    ds = HashDataset(np.array([2, 0, 1, 2]), images=images, num_classes=3, ids=['a', 'b', 'c', 'd'])
    assert len(ds) == 4 and ds.num_classes == 3 and ds.single_label and ds.in_memory
    assert ds.labels.dtype == np.uint8 and ds.labels.tolist()[0] == [0, 0, 1]
    assert ds.class_indices().tolist() == [2, 0, 1, 2]
    image, label = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 3, 2)
    assert all(torch.equal(image[c], torch.from_numpy(images[1])) for c in range(3))  # gray -> RGB
    assert label.dtype == torch.float32 and label.tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(ds[-1][0], ds[3][0])
    with pytest.raises(IndexError):
        ds[4]


def test_subset_is_a_view_in_the_given_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    labels = np.array([[1, 1], [0, 1], [1, 0], [1, 1], [0, 1], [1, 0]], dtype=np.uint8)
    ds = HashDataset(labels, images=images, ids=[str(i) for i in range(6)])
    assert not ds.single_label
    with pytest.raises(ValueError, match='multi-label'):
        ds.class_indices()
    sub = ds.subset([5, 1, 3]).subset([2, 0])  # -> items 3, 5
    assert sub.ids == ['3', '5'] and sub.labels.tolist() == [[1, 1], [1, 0]]
    assert np.shares_memory(sub._images, images)  # no image copy
    assert torch.equal(sub[0][0], torch.from_numpy(images[3]).permute(2, 0, 1))
    np.testing.assert_array_equal(sub.image_array(), images[[3, 5]])
    with pytest.raises(IndexError, match='0..5'):
        ds.subset([6])


def test_timm_transform_and_dataloader():
    rng = np.random.default_rng(0)
    ds = HashDataset(rng.integers(0, 10, 10), images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
                     num_classes=10, transform=_small_transform())
    image, label = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert label.dtype == torch.float32 and label.shape == (10,)
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert labels.shape == (4, 10) and labels.dtype == torch.float32 and torch.all(labels.sum(1) == 1)


def test_constructor_rejects_bad_inputs():
    with pytest.raises(ValueError, match='exactly one'):
        HashDataset([0, 1])
    with pytest.raises(ValueError, match='uint8'):
        HashDataset([0, 1], images=np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match='2 images but 3 label rows'):
        HashDataset([0, 1, 1], images=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match='0 or 1'):
        HashDataset(np.array([[0, 2]]), images=np.zeros((1, 4, 4), dtype=np.uint8))


# ------------------------------------------------------------------------------------------------ list files
def test_list_file_loads_files_and_labels(tmp_path):
    arrays = _write_images(tmp_path, 3)
    lst = tmp_path / 'train.txt'
    lst.write_text('img/0.png 1 0 1\n\nimg/1.png 0 1 0\r\n  \nimg/2.png 0 0 1\n')
    ds = load_list_file(lst, tmp_path)
    assert len(ds) == 3 and ds.num_classes == 3 and not ds.single_label
    assert ds.ids == ['img/0.png', 'img/1.png', 'img/2.png'] and ds.line_numbers == [1, 3, 5]
    assert ds.labels.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    image, label = ds[1]
    assert torch.equal(image, torch.from_numpy(arrays[1]).permute(2, 0, 1)) and label.tolist() == [0, 1, 0]
    assert load_list_file(lst).image_root == tmp_path  # default root: the list file's folder
    ds.transform = _small_transform()
    images, labels = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (3, 3, 64, 64) and labels.dtype == torch.float32


@pytest.mark.parametrize('content, line, exc, message', [
    ('img/0.png 1 0\nimg/1.png 0 1 1\n', 2, ValueError, r'3 labels, but 1 of 2 lines have 2 \(the first: line 1\)'),
    ('\nimg/0.png 1 0\nimg/1.png 0 2\n', 3, ValueError, "label '2' in column 3 is not 0 or 1"),
    ('img/0.png 1 0\nimg/1.png 0 yes\n', 2, ValueError, "label 'yes'"),
    ('img/0.png 1 0\nimg/missing.png 0 1\n', 2, FileNotFoundError, 'image img/missing.png not found under'),
    ('img/0.png 1 0\nimg/1.png\n', 2, ValueError, 'no labels after the image path'),
])
def test_list_file_errors_name_file_and_line(tmp_path, content, line, exc, message):
    _write_images(tmp_path, 2)
    lst = tmp_path / 'bad.txt'
    lst.write_text(content)
    with pytest.raises(exc, match=_line_error(lst, line, message)):
        load_list_file(lst, tmp_path)


def test_list_file_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'nope\.txt: list file not found'):
        load_list_file(tmp_path / 'nope.txt', tmp_path)
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n  \n')
    with pytest.raises(ValueError, match=r'empty\.txt: empty list file'):
        load_list_file(empty, tmp_path)


def test_unreadable_image_names_file_and_list_line(tmp_path):
    _write_images(tmp_path, 1)
    (tmp_path / 'img' / 'broken.png').write_bytes(b'not a png')
    lst = tmp_path / 'list.txt'
    lst.write_text('img/0.png 1 0\n\nimg/broken.png 0 1\nimg/gone.png 1 1\n')
    ds = load_list_file(lst, tmp_path, check_images=False)
    assert ds[0][1].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r'listed at .*list\.txt:3: .*broken\.png: cannot open image'):
        ds[1]
    with pytest.raises(ValueError, match=r'listed at .*list\.txt:4: .*gone\.png: cannot open image'):
        ds.subset([2])[0]


# ------------------------------------------------------------------------------------------------ COCO
def _coco_json(tmp_path: Path) -> Path:
    _write_images(tmp_path, 3)
    data = {
        'images': [{'id': 30, 'file_name': '2.png'}, {'id': 10, 'file_name': '0.png'},
                   {'id': 20, 'file_name': '1.png'}],
        'categories': [{'id': 7, 'name': 'zebra'}, {'id': 3, 'name': 'car'}],  # ascending id: car, zebra
        'annotations': [{'id': 1, 'image_id': 10, 'category_id': 7}, {'id': 2, 'image_id': 10, 'category_id': 3},
                        {'id': 3, 'image_id': 30, 'category_id': 7}, {'id': 4, 'image_id': 30, 'category_id': 7}],
    }  # image 20 has no annotation
    path = tmp_path / 'instances_tiny.json'
    path.write_text(json.dumps(data))
    return path


def test_coco_multi_hot_in_category_id_order(tmp_path, capsys):
    ds = load_coco(_coco_json(tmp_path), tmp_path / 'img')
    assert capsys.readouterr().out == ''  # pycocotools' progress prints are silenced
    assert ds.class_names == ('car', 'zebra') and ds.num_classes == 2
    assert ds.ids == ['10', '30'] and ds.num_dropped == 1 and not ds.single_label
    assert ds.labels.tolist() == [[1, 1], [0, 1]]
    image, label = ds[1]
    assert image.shape == (3, 6, 5) and label.tolist() == [0.0, 1.0]


def test_coco_bad_files(tmp_path):
    good = json.loads(_coco_json(tmp_path).read_text())
    no_anns = tmp_path / 'image_info_test.json'
    no_anns.write_text(json.dumps({k: v for k, v in good.items() if k != 'annotations'}))
    with pytest.raises(ValueError, match=r"image_info_test\.json: no 'annotations' key"):
        load_coco(no_anns, tmp_path)
    broken = tmp_path / 'broken.json'
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match=r'broken\.json: unreadable COCO annotation json'):
        load_coco(broken, tmp_path)
    with pytest.raises(FileNotFoundError, match=r'absent\.json'):
        load_coco(tmp_path / 'absent.json', tmp_path)
    good['annotations'].append({'id': 9, 'image_id': 20, 'category_id': 99})
    unknown = tmp_path / 'unknown_cat.json'
    unknown.write_text(json.dumps(good))
    with pytest.raises(ValueError, match=r'unknown_cat\.json: annotation 9 of image 20 has category 99'):
        load_coco(unknown, tmp_path)


# ------------------------------------------------------------------------------------------------ mosaic
def _source(n: int = 20):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


def test_mosaic_deterministic_from_seed():
    images, labels = _source()
    a, la = make_mosaic(images, labels, n=12, seed=5)
    b, lb = make_mosaic(images, labels, n=12, seed=5)
    c, _ = make_mosaic(images, labels, n=12, seed=6)
    assert a.shape == (12, 56, 56) and a.dtype == np.uint8 and la.shape == (12, 10) and la.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert make_mosaic(images, labels, n=3, seed=0, grid=3)[0].shape == (3, 84, 84)


def test_mosaic_quadrants_and_label_union():
    images, labels = _source()
    mosaics, multi_hot = make_mosaic(images, labels, n=8, seed=1)
    index = mosaic_indices(len(images), 8, seed=1)
    for k in range(8):
        quads = [mosaics[k, :28, :28], mosaics[k, :28, 28:], mosaics[k, 28:, :28], mosaics[k, 28:, 28:]]
        for q, src in zip(quads, index[k], strict=True):
            np.testing.assert_array_equal(q, images[src])
        assert set(np.flatnonzero(multi_hot[k])) == {int(labels[s]) for s in index[k]}


def test_pair_mosaics_fill_two_tiles_and_keep_the_full_mosaics_draws():
    """filled=2: two items on seeded tiles, the other two black and label-free; without it, the draws (and so
    every mosaic already built) are what they were."""
    images, labels = _source()
    full = mosaic_indices(len(images), 50, seed=4)
    np.testing.assert_array_equal(full, np.random.default_rng(4).integers(0, len(images), (50, 4), dtype=np.int64))
    pair = mosaic_indices(len(images), 50, seed=4, filled=2)
    assert ((pair >= 0).sum(axis=1) == 2).all() and len({tuple(r >= 0) for r in pair}) > 1  # positions vary
    np.testing.assert_array_equal(pair[pair >= 0], full[pair >= 0])
    mosaics, multi_hot = compose_mosaic(images, labels, pair, 10)
    for k in range(50):
        quads = [mosaics[k, :28, :28], mosaics[k, :28, 28:], mosaics[k, 28:, :28], mosaics[k, 28:, 28:]]
        for q, src in zip(quads, pair[k], strict=True):
            np.testing.assert_array_equal(q, images[src] if src >= 0 else 0)
        assert set(np.flatnonzero(multi_hot[k])) == {int(labels[s]) for s in pair[k] if s >= 0}
    with pytest.raises(ValueError, match='filled must be 1..4'):
        mosaic_indices(len(images), 5, seed=0, filled=5)
    with pytest.raises(ValueError, match='no blank tiles'):
        quadrant_labels(labels, pair, 10)
    with pytest.raises(ValueError, match=r'tile indices must lie in -1..19'):
        compose_mosaic(images, labels, np.array([[0, 1, 2, 20]]), 10)


# ------------------------------------------------------------------------------------------------ protocols
def test_split_protocol_disjoint_and_deterministic():
    a = split_protocol(100, num_query=10, num_train=20, seed=0)
    assert (len(a.query), len(a.train), len(a.database)) == (10, 20, 90)
    assert not set(a.query) & set(a.database) and set(a.train) <= set(a.database)
    assert sorted(set(a.query) | set(a.database)) == list(range(100))
    b = split_protocol(100, num_query=10, num_train=20, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a.query, split_protocol(100, 10, 20, seed=1).query)

    rest = split_protocol(100, 10, 20, seed=0, train_from='rest')
    assert len(rest.database) == 70 and not set(rest.train) & (set(rest.database) | set(rest.query))
    pooled = split_protocol(100, 5, None, seed=0, query_pool=range(90, 100), num_database=30)
    assert set(pooled.query) <= set(range(90, 100)) and len(pooled.database) == 30
    assert np.array_equal(pooled.train, pooled.database)


def test_split_protocol_counts_too_large():
    with pytest.raises(ValueError, match='num_query=101 but only 100'):
        split_protocol(100, 101, 10, seed=0)
    with pytest.raises(ValueError, match='num_train=95 but only 90'):
        split_protocol(100, 10, 95, seed=0)
    with pytest.raises(ValueError, match='no items left for the database'):
        split_protocol(10, 10, None, seed=0)
    with pytest.raises(ValueError, match='non-negative'):
        split_protocol(10, -1, None, seed=0)


def test_presets_hold_the_papers_counts():
    assert (PROTOCOLS['nuswide21'].num_query, PROTOCOLS['nuswide21'].num_train) == (2100, 10500)
    assert (PROTOCOLS['nuswide81'].num_query, PROTOCOLS['nuswide81'].num_train) == (5000, 10000)
    assert (PROTOCOLS['coco'].num_query, PROTOCOLS['coco'].num_train) == (5000, 10000)
    assert all(PROTOCOLS[k].train_from == 'database' for k in ('nuswide21', 'nuswide81', 'coco'))
    assert PROTOCOLS['fashion-mnist'].num_query == 10000
    m = PROTOCOLS['mosaic']
    assert (m.num_query, m.num_train, m.num_database) == (1000, 5000, 20000)


def test_build_from_list_and_coco(tmp_path):
    _write_images(tmp_path, 40)
    rows = np.random.default_rng(0).integers(0, 2, (40, 21))
    rows[:, 0] = 1  # a label on every row (rows without one are warned about)
    lst = tmp_path / 'nus21.txt'
    lst.write_text(''.join(f'img/{i}.png ' + ' '.join(map(str, r)) + '\n' for i, r in enumerate(rows)))
    with pytest.raises(ValueError, match="preset 'nuswide21', which needs at least 12,600 items; the list has 40"):
        build_retrieval_data(f'list:{lst}')  # the nuswide21 preset, inferred from 21 columns
    out = build_retrieval_data(f'list:{lst}', seed=1, num_query=5, num_train=8, transform=_small_transform())
    assert {k: len(v) for k, v in out.items()} == {'train': 8, 'query': 5, 'database': 35}
    assert not set(out['query'].line_numbers) & set(out['database'].line_numbers)
    assert out['query'][0][0].shape == (3, 64, 64)
    again = build_retrieval_data(f'list:{lst}', seed=1, num_query=5, num_train=8, subset=10)
    assert again['query'].line_numbers == out['query'].line_numbers and len(again['database']) == 10
    assert len(again['train']) == 8

    coco = _coco_json(tmp_path)
    out = build_retrieval_data(f'coco:{coco}', root=tmp_path / 'img', num_query=1, num_train=1)
    assert {k: len(v) for k, v in out.items()} == {'train': 1, 'query': 1, 'database': 1}
    with pytest.raises(ValueError, match='num_query=5,000 but only 2'):
        build_retrieval_data(f'coco:{coco}', root=tmp_path / 'img')
    with pytest.raises(ValueError, match='unknown data'):
        build_retrieval_data('cifar')


@needs_fmnist
def test_fashion_mnist_protocol_sizes():
    out = build_retrieval_data('fashion-mnist', seed=0)
    assert {k: len(v) for k, v in out.items()} == {'train': 60000, 'query': 10000, 'database': 60000}
    assert all(i.startswith('test/') for i in out['query'].ids)
    assert all(ds.single_label and ds.num_classes == 10 for ds in out.values())
    small = build_retrieval_data('fashion-mnist', seed=0, subset=500, num_train=100)
    assert small['query'].ids == out['query'].ids  # same seed, same queries
    assert {k: len(v) for k, v in small.items()} == {'train': 100, 'query': 10000, 'database': 500}
    assert set(small['train'].ids) <= set(small['database'].ids)
    assert out['query'].ids == [f'test/{i}' for i in range(10000)]  # the whole test set, in order
    def draw(seed):
        return build_retrieval_data('fashion-mnist', seed=seed, subset=10, num_query=100)['query'].ids
    assert draw(1) != draw(0)  # fewer queries than test images: a seeded draw
    with pytest.raises(ValueError, match='num_query=10,001 but only 10,000 Fashion-MNIST test images'):
        build_retrieval_data('fashion-mnist', num_query=10001)


@needs_fmnist
def test_mosaic_protocol_from_fashion_mnist():
    out = build_retrieval_data('mosaic', seed=0, num_query=10, num_train=20, subset=50,
                               transform=_small_transform())
    assert {k: len(v) for k, v in out.items()} == {'train': 20, 'query': 10, 'database': 50}
    assert all(i.startswith('test:') for i in out['query'].ids) and out['database'].ids[0].startswith('train:')
    assert out['database'].image_array().shape == (50, 56, 56) and not out['database'].single_label
    image, label = out['train'][0]
    assert image.shape == (3, 64, 64) and label.shape == (10,) and 1 <= label.sum() <= 4
    again = build_retrieval_data('mosaic', seed=0, num_query=10, num_train=20, subset=50)
    np.testing.assert_array_equal(again['database'].image_array(), out['database'].image_array())
    with pytest.raises(ValueError, match='num_train=60 but only 50 database mosaics'):
        build_retrieval_data('mosaic', num_query=10, num_train=60, subset=50)


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_pair_mosaics_discriminate_without_position():
    """mosaic-pair: one or two labels per mosaic, random codes below 0.4 mAP@all on the cpu-pretrained budget's
    sets (2,000 queries x 10,000 database mosaics), and labels a horizontal flip keeps."""
    from deephash_zoo.data import build_retrieval_data, labels_survive_flip
    from deephash_zoo.experiments.budgets import get_budget
    from deephash_zoo.experiments.runs import chance_level

    out = build_retrieval_data('mosaic-pair', seed=0)
    assert {k: len(v) for k, v in out.items()} == {'train': 5000, 'query': 2000, 'database': 20000}
    q = out['query']
    assert set(q.labels.sum(axis=1)) == {1, 2} and q.labels.shape == (2000, 10) and not q.single_label
    assert all(i.startswith('test:') and i.count('-') == 2 for i in q.ids[:50])  # two blank tiles each
    assert (q.image_array() == 0).reshape(2000, 2, 28, 2, 28).all(axis=(2, 4)).sum(axis=(1, 2)).min() >= 2
    assert chance_level('mosaic-pair', get_budget('cpu-pretrained'), 0)['map'] < 0.4
    assert labels_survive_flip('mosaic-pair') and not labels_survive_flip('mosaic-quadrant')


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_single_item_canvases_show_one_item_at_tile_scale_with_its_class():
    """mosaic-single, the mosaics' pretraining data: one item on one tile of a black 2x2 canvas, single-label
    with that item's class, and the whole database trained on (a preset without a training count)."""
    from deephash_zoo.data import build_retrieval_data, load_fashion_mnist

    out = build_retrieval_data('mosaic-single', seed=0, num_query=30, subset=200)
    assert {k: len(v) for k, v in out.items()} == {'train': 200, 'query': 30, 'database': 200}
    train = out['train']
    assert train.single_label and train.labels.shape == (200, 10) and set(train.labels.sum(axis=1)) == {1}
    images = train.image_array().reshape(200, 2, 28, 2, 28).transpose(0, 1, 3, 2, 4).reshape(200, 4, 28, 28)
    source_images, source_labels = load_fashion_mnist('train')
    for k in range(200):
        tiles = train.ids[k].split(':')[1].split('+')
        (where, item), = [(t, int(i)) for t, i in enumerate(tiles) if i != '-']
        np.testing.assert_array_equal(images[k, where], source_images[item])
        assert (images[k, [t for t in range(4) if t != where]] == 0).all()
        assert train.labels[k].argmax() == source_labels[item]
    assert len(build_retrieval_data('mosaic-single', seed=0, num_query=30)['train']) == 60000


@pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
def test_mosaic_quadrant_labels_discriminate():
    """Same mosaics, (tile, class) labels: 40 columns, one label per tile, and random codes far below the
    union-of-classes labelling's level (which relates 81% of pairs)."""
    from deephash_zoo.data import build_retrieval_data
    from deephash_zoo.retrieval.metrics import mean_average_precision, random_codes

    union = build_retrieval_data('mosaic', seed=3, subset=2000, num_query=200)
    quad = build_retrieval_data('mosaic-quadrant', seed=3, subset=2000, num_query=200)
    q, d = quad['query'], quad['database']
    assert q.labels.shape == (200, 40) and (q.labels.sum(axis=1) == 4).all() and not q.single_label
    assert q.class_names[0] == 'top-left T-shirt/top' and q.class_names[39] == 'bottom-right Ankle boot'
    assert np.array_equal(q.load_image(5), union['query'].load_image(5))  # the same images
    # the union labelling is the OR over tiles of the quadrant labels
    assert np.array_equal(q.labels.reshape(200, 4, 10).max(axis=1), union['query'].labels)
    rq, rd = random_codes(len(q), len(d), 32, seed=0)
    chance = mean_average_precision(rq, rd, q.labels, d.labels, bits=32).map
    chance_union = mean_average_precision(rq, rd, union['query'].labels, union['database'].labels, bits=32).map
    assert chance < 0.4 < 0.7 < chance_union
