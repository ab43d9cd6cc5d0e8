"""Own labelled images: class folders (``folder:DIR``), the generic ``'own'`` split, and list files' mistakes
(repeated images, rows without a label, headers, comments, spaced paths, an odd label count)."""
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from deephash_zoo.data import (
    PROTOCOLS,
    build_retrieval_data,
    load_fashion_mnist,
    load_image_folder,
    load_list_file,
)
from deephash_zoo.data.images import ImageRejected
from deephash_zoo.evaluation.protocol import default_topk
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='Fashion-MNIST idx files not installed')
CLASSES = ('bag', 'coat', 'trouser')  # sorted, as folder: data orders them
FMNIST_CLASS = {'bag': 8, 'coat': 4, 'trouser': 1}


def _write_classes(root: Path, per_class: int = 12, size: int = 32) -> Dict[str, List[str]]:
    """``per_class`` Fashion-MNIST test images of each of :data:`CLASSES` as PNGs in ``root/<class>/``;
    returns the relative paths written per class."""
    images, labels = load_fashion_mnist('test')
    written = {}
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(labels == FMNIST_CLASS[name])[:per_class]
        written[name] = []
        for j, row in enumerate(rows):
            Image.fromarray(images[row]).resize((size, size)).save(root / name / f'{j:02d}.png')
            written[name].append(f'{name}/{j:02d}.png')
    return written


def _list_for(folder: Path, written: Dict[str, List[str]], num_labels: int = len(CLASSES)) -> Path:
    """A list file of the same images, one-hot over ``num_labels`` columns."""
    lines = [f'{rel} ' + ' '.join('1' if k == c else '0' for k in range(num_labels))
             for c, name in enumerate(CLASSES) for rel in written[name]]
    path = folder / 'own.txt'
    path.write_text('\n'.join(lines) + '\n')
    return path


@pytest.fixture
def classes(tmp_path) -> Path:
    _write_classes(tmp_path / 'photos')
    return tmp_path / 'photos'


# ------------------------------------------------------------------------------------------------ folder: data
@needs_fmnist
def test_folder_reads_class_folders_recursively_and_skips_other_files(classes):
    (classes / 'coat' / 'winter' / 'deep').mkdir(parents=True)
    Image.new('L', (20, 20), 7).save(classes / 'coat' / 'winter' / 'deep' / 'x.PNG')  # nested, upper-case suffix
    for junk in ('coat/.DS_Store', 'coat/notes.txt', 'coat/._00.png', 'bag/.hidden/h.png', '.stray/s.png'):
        (classes / junk).parent.mkdir(parents=True, exist_ok=True)
        (classes / junk).write_bytes(b'not an image')
    Image.new('L', (20, 20)).save(classes / 'top.png')  # beside the class folders: in no class

    ds = load_image_folder(classes)
    assert ds.class_names == CLASSES and ds.single_label and len(ds) == 37
    assert ds.ids[12:14] == ['coat/00.png', 'coat/01.png'] and ds.ids[24] == 'coat/winter/deep/x.PNG'
    assert ds.class_indices().tolist() == [0] * 12 + [1] * 13 + [2] * 12
    image, label = ds[24]  # opened only now, as RGB
    assert tuple(image.shape) == (3, 20, 20) and label.tolist() == [0.0, 1.0, 0.0]


def _one_class(root: Path) -> None:
    (root / 'only').mkdir(parents=True)
    Image.new('L', (8, 8)).save(root / 'only' / 'a.png')


def _empty_class(root: Path) -> None:
    _one_class(root)
    (root / 'empty' / 'sub').mkdir(parents=True)
    (root / 'empty' / 'sub' / 'readme.txt').write_text('no images here')


def _flat(root: Path) -> None:
    root.mkdir()
    Image.new('L', (8, 8)).save(root / 'a.png')


def _linked_twice(root: Path) -> None:
    _one_class(root)
    (root / 'other').mkdir()
    os.symlink(root / 'only' / 'a.png', root / 'other' / 'a.png')


@pytest.mark.parametrize('make, exc, message', [
    (lambda root: None, FileNotFoundError, 'no such folder'),
    (_flat, ValueError, 'no class folders; folder: data wants one subfolder of images per class'),
    (_empty_class, ValueError, "class folder 'empty' holds no images"),
    (_one_class, ValueError, "only one class folder ('only'); retrieval needs at least 2 classes"),
    (_linked_twice, ValueError, 'only/a.png and other/a.png are the same file'),
])
def test_folder_refusals_name_the_problem_in_one_line(tmp_path, make, exc, message):
    root = tmp_path / 'data'
    make(root)
    with pytest.raises(exc, match=re.escape(message)) as caught:
        build_retrieval_data(f'folder:{root}')
    assert '\n' not in str(caught.value)


def test_folder_corrupt_image_fails_when_read_as_list_images_do(tmp_path):
    for name in ('a', 'b'):
        (tmp_path / name).mkdir()
        Image.new('L', (8, 8)).save(tmp_path / name / 'ok.png')
    (tmp_path / 'b' / 'broken.png').write_bytes(b'not a png')
    ds = load_image_folder(tmp_path)  # lazily: loading the folder opens no image
    with pytest.raises(ImageRejected, match=r'b/broken\.png: cannot open image'):
        ds[ds.ids.index('b/broken.png')]


def test_folder_refuses_a_data_root(tmp_path):
    with pytest.raises(ValueError, match='the folder holds the images itself'):
        build_retrieval_data(f'folder:{tmp_path}', root=tmp_path)


# ------------------------------------------------------------------------------------------------ the own split
def test_own_split_counts():
    own = PROTOCOLS['own']
    assert [own.query_count(n) for n in (2, 9, 36, 300, 49_999, 1_000_000)] == [1, 1, 3, 30, 4_999, 5_000]
    assert own.num_train is None and own.train_from == 'database' and own.map_topk is None and own.description


@needs_fmnist
def test_own_split_is_one_split_for_folders_and_unmatched_lists(classes):
    a = build_retrieval_data(f'folder:{classes}', seed=3)
    assert {k: len(v) for k, v in a.items()} == {'train': 33, 'query': 3, 'database': 33}
    assert a['train'].ids == a['database'].ids and not set(a['query'].ids) & set(a['database'].ids)
    again = build_retrieval_data(f'folder:{classes}', seed=3)
    assert again['query'].ids == a['query'].ids  # eval/index rebuild it from the data name and seed alone
    assert build_retrieval_data(f'folder:{classes}', seed=4)['query'].ids != a['query'].ids
    written = {name: sorted(p.relative_to(classes).as_posix() for p in (classes / name).iterdir()) for name in CLASSES}
    listed = build_retrieval_data(f'list:{_list_for(classes, written)}', seed=3)  # 3 columns: no paper preset
    assert listed['query'].ids == a['query'].ids and listed['database'].ids == a['database'].ids


def test_default_topk_ranks_the_whole_database_for_own_data():
    assert default_topk('folder:photos', 21) is None  # 21 classes, but not NUS-WIDE
    assert default_topk('list:own.txt', 5) is None
    assert default_topk('list:nus.txt', 21) == 5000 and default_topk('coco:x.json', 80) == 5000


def _one_hot_rows(hot: List[int], num_labels: int) -> str:
    return ''.join(f'img{i}.png ' + ' '.join('1' if k == h else '0' for k in range(num_labels)) + '\n'
                   for i, h in enumerate(hot))


@pytest.mark.parametrize('hot, message', [
    ([1, 1, 1], "only 'label column 3' has items"),
    ([-1, -1], 'no item has a label'),
])
def test_own_data_of_one_class_is_refused(tmp_path, hot, message):
    lst = tmp_path / 'one.txt'
    lst.write_text(_one_hot_rows(hot, 3))
    with pytest.warns(UserWarning) if -1 in hot else warnings.catch_warnings():
        with pytest.raises(ValueError, match=re.escape(message) + '; retrieval needs items of at least 2 classes'):
            build_retrieval_data(f'list:{lst}', check_images=False)


def test_a_list_too_small_for_its_paper_preset_says_what_to_do(tmp_path):
    lst = tmp_path / 'coco80.txt'
    lst.write_text(_one_hot_rows([0, 0, 0, 1, 1, 2], 80))
    with pytest.raises(ValueError, match=re.escape("80 label columns put it on the paper preset 'coco', which needs at "
                                                   'least 15,000 items; the list has 6')) as caught:
        build_retrieval_data(f'list:{lst}', check_images=False)
    assert "protocol='own'" in str(caught.value)
    own = build_retrieval_data(f'list:{lst}', check_images=False, protocol='own')
    assert (len(own['query']), len(own['database'])) == (1, 5)


# ------------------------------------------------------------------------------------------------ list files
def _list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / 'own.txt'
    path.write_text(text)
    return path


@pytest.mark.parametrize('text, message', [
    ('a.png 1 0\nb.png 0 1\n./a.png 0 1\n', r'own\.txt:3: image ./a.png is listed again \(first on line 1\)'),
    ('a.png 1 0 0\nb.png 0 1 0 1\nc.png 0 0 1 0\n', r'own\.txt:1: 3 labels, but 2 of 3 lines have 4 \(the first: '
                                                    r'line 2\)'),
    ('path c0 c1\na.png 1 0\nb.png 0 1\n', r'own\.txt:1: looks like a header .* no header or comment lines'),
    ('a.png 1 0\n# my classes\nb.png 0 1\n', r"own\.txt:2: a '#' line, but list files .* no header or comment lines"),
    ('my photos/a b.png 1 0\nb.png 0 1\n', r"own\.txt:1: image path 'my photos/a b.png' holds a space; .* paths with "
                                           r'spaces are not supported'),
    ('a.png 1 0\nb.png 0 x\n', r"own\.txt:2: label 'x' in column 3 is not 0 or 1 \(list files hold"),
])
def test_list_file_mistakes_are_named(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        load_list_file(_list(tmp_path, text), tmp_path, check_images=False)


def test_rows_without_a_label_warn_once_with_their_count(tmp_path):
    path = _list(tmp_path, 'a.png 1 0\nb.png 0 0\nc.png 0 1\nd.png 0 0\n')
    with pytest.warns(UserWarning, match=r'own\.txt: 2 of 4 rows have no label: .* AP is 0') as caught:
        ds = load_list_file(path, tmp_path, check_images=False)
    assert len(caught) == 1 and not ds.single_label
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        load_list_file(_list(tmp_path, 'a.png 1 0\nb.png 0 1\n'), tmp_path, check_images=False)


# ------------------------------------------------------------------------------------------------ the commands
@needs_fmnist
@pytest.mark.slow
def test_folder_data_through_pretrain_train_eval_and_index(classes, tmp_path, capsys, monkeypatch):
    """The README's walk-through on class folders: each command reads ``folder:DIR``, and deephash-eval, given
    only the run, rebuilds the same split from the data name in the checkpoint's config."""
    pytest.importorskip('faiss')
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.cli.eval import main as eval_main
    from deephash_zoo.cli.index import main as index_main
    from deephash_zoo.cli.pretrain import main as pretrain_main
    from deephash_zoo.cli.train import main as train_main

    data, quick = f'folder:{classes}', ['--img-size', '64', '--max-steps', '2', '--batch-size', '8']
    steps = [
        (pretrain_main, ['--trunk', 'alexnet', '--data', data, '--epochs', '1', *quick, '--out', str(tmp_path / 'pt')]),
        # the folder given relative to the working folder: the run records it absolute, so that eval, run from
        # another folder with the run alone, finds the data (it said "no such folder" before)
        (train_main, ['--model', 'dath_n_16', '--recipe', 'scratch', '--data', f'folder:{classes.name}',
                      '--epochs', '1', *quick, '--init', str(tmp_path / 'pt' / 'trunk.safetensors'),
                      '--out', str(tmp_path / 'run')]),
        (eval_main, ['--checkpoint', str(tmp_path / 'run'), '--no-plots', '--no-progress']),
        (index_main, ['build', '--checkpoint', str(tmp_path / 'run'), '--data', data, '--out', str(tmp_path / 'idx'),
                      '--no-progress']),
    ]
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    for main, argv in steps:
        monkeypatch.chdir(classes.parent if main is train_main else elsewhere)
        assert run_main(main, argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f'on {data}: 3 queries, 33 database items (seed 0)' in out and 'mAP@all' in out
    assert f'33 {data} database items' in out


def test_export_verifies_a_small_own_set_on_all_its_queries(classes):
    """deephash-export checks its graphs on 32 test images by default; a 36-image folder has 3 queries, and the
    default count failed the export ('asked for 32 query images, the split has 3'). A count asked for still must
    be there."""
    import timm

    from deephash_zoo.export.verify import verification_inputs

    model = timm.create_model('dath_n_16').eval()
    inputs = verification_inputs(model, 64, data=f'folder:{classes}', random_batches=(1,))
    assert inputs[f'folder:{classes}'].shape == (3, 3, 64, 64) and inputs['random_b1'].shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match='asked for 4 query images, the split has 3'):
        verification_inputs(model, 64, 4, data=f'folder:{classes}')
