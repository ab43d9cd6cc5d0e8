"""Result grids: queries spread over labels by seed, geometry and frame colours as documented, deterministic
bytes, and the grids deephash-eval and deephash-index query --grid write."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from deephash_zoo.cli._common import run_main
from deephash_zoo.data import FASHION_MNIST_CLASSES, HashDataset
from deephash_zoo.retrieval import grid
from tests.test_data_fashion_mnist import HAS_FMNIST

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')


def _frame_color(img: Image.Image, layout: grid.GridLayout, row: int, col: int) -> tuple:
    x, y = layout.origin(row, col)
    return img.getpixel((x + 1, y + layout.box // 2))  # inside the left frame bar, mid-height


def _frames(png: bytes, rows: int, cols: int) -> list:
    img = Image.open(io.BytesIO(png)).convert('RGB')
    layout = grid.GridLayout(rows=rows, cols=cols)
    assert img.size == layout.size
    return [[_frame_color(img, layout, r, c) for c in range(cols)] for r in range(rows)]


# -------------------------------------------------------------------------------------------- library
def test_pick_queries_spread_over_labels_and_seeded():
    labels = np.eye(10, dtype=np.uint8)[np.random.default_rng(0).integers(0, 10, 500)]
    picks = grid.pick_queries(labels, 6, seed=0)
    assert len(picks) == 6 and len(set(picks.tolist())) == 6
    assert len(set(labels[picks].argmax(1).tolist())) == 6  # six rows, six classes
    assert np.array_equal(picks, grid.pick_queries(labels, 6, seed=0))
    assert not np.array_equal(picks, grid.pick_queries(labels, 6, seed=1))
    every = grid.pick_queries(labels, 25, seed=3)  # more rows than classes: round robin, no repeats
    assert len(set(every.tolist())) == 25 and np.bincount(labels[every].argmax(1), minlength=10).min() >= 2
    assert len(grid.pick_queries(labels[:4], 9)) == 4
    multi = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 1]], dtype=np.uint8)
    assert sorted(grid.pick_queries(multi, 4, seed=0).tolist()) == [0, 1, 2, 3]  # the label-less item last


def test_relevance_and_nearest_tie_break():
    q = np.array([1, 0, 1], dtype=np.uint8)
    db = np.array([[0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    assert grid.relevance(q, db).tolist() == [False, True, True, False]
    codes = np.packbits(np.array([[1, 0, 1, 0, 1, 0, 1, 0], [1, 0, 1, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 1, 0, 1],
                                  [1, 0, 1, 0, 1, 0, 1, 0]], dtype=np.uint8), axis=1)
    pos, dist = grid.nearest(codes[:1], codes, 3)
    assert pos.tolist() == [[0, 3, 1]] and dist.tolist() == [[0, 0, 1]]  # equal distances: lower index first


def test_render_grid_geometry_colours_and_bytes():
    def solid(v):
        return Image.new('L', (28, 28), v)

    rows = [[grid.GridCell(solid(200), 'Dress', query=True), grid.GridCell(solid(190), 'Dress', 0, True),
             grid.GridCell(solid(10), 'Bag', 3, False), grid.GridCell(solid(90), 'Coat', 5, None)],
            [grid.GridCell(solid(50), 'Bag', query=True), grid.GridCell(solid(60), 'Bag', 1, True)]]
    png = grid.grid_png(rows, 'a title')
    assert png == grid.grid_png(rows, 'a title')  # deterministic
    frames = _frames(png, 2, 4)
    assert frames[0] == [grid.QUERY, grid.RELEVANT, grid.IRRELEVANT, grid.UNKNOWN]
    assert frames[1][:2] == [grid.QUERY, grid.RELEVANT] and frames[1][2] == (255, 255, 255)  # short row: blank
    img = Image.open(io.BytesIO(png)).convert('L')
    x, y = grid.GridLayout(2, 4).origin(0, 2)
    assert img.getpixel((x + 40, y + 40)) == 10  # the image itself, scaled into the frame
    with pytest.raises(ValueError, match='at least one row'):
        grid.render_grid([])


def test_ranked_rows_from_a_dataset():
    labels = np.array([0, 1, 0, 2])
    images = np.stack([np.full((28, 28), v, np.uint8) for v in (10, 20, 30, 40)])
    db = HashDataset(labels, images=images, class_names=FASHION_MNIST_CLASSES[:3])
    rows = grid.ranked_rows([Image.new('RGB', (28, 28))], db.labels[[0]], db, np.array([[2, 1, -1]]),
                            np.array([[0, 4, -1]]))
    assert [c.label for c in rows[0]] == ['T-shirt/top', 'T-shirt/top', 'Trouser']  # the -1 slot left out
    assert [c.color for c in rows[0]] == [grid.QUERY, grid.RELEVANT, grid.IRRELEVANT]
    unknown = grid.ranked_rows([Image.new('RGB', (28, 28))], None, db, np.array([[3]]), np.array([[1]]))
    assert unknown[0][1].color == grid.UNKNOWN and unknown[0][1].distance == 1


# ------------------------------------------------------------------------------------------------ CLIs
@needs_fmnist
def test_eval_writes_retrieval_grid(tiny_run, tmp_path, capsys):
    pytest.importorskip('matplotlib')
    from deephash_zoo.cli.eval import main as eval_main

    args = ['--checkpoint', str(tiny_run[0]), '--query-subset', '30', '--db-subset', '80', '--no-progress']
    assert run_main(eval_main, [*args, '--out', str(tmp_path / 'a'), '--grid-rows', '3']) == 0
    assert 'retrieval_grid.png' in capsys.readouterr().out
    png = (tmp_path / 'a' / 'retrieval_grid.png').read_bytes()
    frames = _frames(png, 3, 11)
    assert all(row[0] == grid.QUERY for row in frames)
    assert all(c in (grid.RELEVANT, grid.IRRELEVANT) for row in frames for c in row[1:])
    assert run_main(eval_main, [*args, '--out', str(tmp_path / 'b'), '--grid-rows', '3']) == 0
    assert (tmp_path / 'b' / 'retrieval_grid.png').read_bytes() == png  # same queries, same pixels
    assert run_main(eval_main, [*args, '--out', str(tmp_path / 'c'), '--grid-rows', '0']) == 0
    assert run_main(eval_main, [*args, '--out', str(tmp_path / 'd'), '--no-plots']) == 0
    assert not (tmp_path / 'c' / 'retrieval_grid.png').exists() and not (tmp_path / 'd' / 'retrieval_grid.png').exists()
    assert not list((tmp_path / 'a').glob('.*tmp*'))


@needs_fmnist
def test_index_query_grid(tiny_index, tmp_path, capsys):
    from deephash_zoo.cli.index import main as index_main
    from deephash_zoo.data import build_retrieval_data

    test = build_retrieval_data('fashion-mnist', seed=0)['query']
    paths = []
    for i in (0, 1):
        paths.append(tmp_path / f'q{i}.png')
        test.load_image(i).save(paths[-1])
    out = tmp_path / 'grids' / 'query.png'
    assert run_main(index_main, ['query', '--index', str(tiny_index), '--image', *map(str, paths), '-k', '5',
                                 '--json', '--grid', str(out)]) == 0
    results = json.loads(capsys.readouterr().out)['results']
    frames = _frames(out.read_bytes(), 2, 6)
    assert all(row == [grid.QUERY] + [grid.UNKNOWN] * 5 for row in frames)  # an image file has no label
    assert [len(r['ids']) for r in results] == [5, 5]
