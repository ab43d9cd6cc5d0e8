"""deephash-eval and deephash-index end to end on a tiny checkpoint: metrics.json equals evaluate() on codes
computed here, plots are PNGs, index build/query round trips, and every refusal is one clear line."""
import json

import numpy as np
import pytest
import torch

import deephash_zoo  # noqa: F401  (registers the models)
from deephash_zoo.cli._common import run_main
from deephash_zoo.cli.eval import main as eval_main
from deephash_zoo.cli.index import main as index_main
from deephash_zoo.evaluation import EVAL_NS
from deephash_zoo.hub.checkpoint import weights_sha256
from deephash_zoo.retrieval.encoding import encode_dataset, encode_dataset_lengths, model_transform
from deephash_zoo.retrieval.metrics import evaluate, mean_average_precision, random_codes
from tests.conftest import TINY_IMG, TINY_NDB, save_tiny, tiny_model
from tests.test_data_fashion_mnist import HAS_FMNIST

pytest.importorskip('faiss')

needs_fmnist = pytest.mark.skipif(not HAS_FMNIST, reason='dataset-fashion-mnist not installed (.ci/setup.sh)')
IMG = TINY_IMG
NQ, NDB = 40, TINY_NDB
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


_model, _save = tiny_model, save_tiny


@pytest.fixture(scope='module')
def run(tiny_run):
    """A training-run folder holding a two-length (8, 16) checkpoint trained at 64x64 (shared, conftest)."""
    return tiny_run


def _one_line_error(capsys, code, *needles):
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and 'Traceback' not in err, err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------------- library
def test_encode_dataset_matches_model_encode(run):
    from deephash_zoo.data import HashDataset

    _, model = run
    rng = np.random.default_rng(0)
    ds = HashDataset(rng.integers(0, 3, 10), images=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8))
    ds.transform = model_transform(model, IMG)
    batch = torch.stack([ds[i][0] for i in range(len(ds))])
    assert batch.shape[-2:] == (IMG, IMG)
    both = encode_dataset(model, ds, batch_size=4, progress=False)
    assert both.dtype == np.uint8 and np.array_equal(both, model.encode(batch, packed=True).numpy())
    per = encode_dataset_lengths(model, ds, batch_size=4, progress=False)
    for bits in (8, 16):
        assert np.array_equal(per[bits], model.encode(batch, bits=bits, packed=True).numpy())
    ds.transform = None  # falls back to the model's own transform (default 224 px) rather than uint8 tensors
    assert encode_dataset(model, ds.subset([0, 1]), bits=8, progress=False).shape == (2, 1)
    with pytest.raises(ValueError, match='code lengths'):
        encode_dataset(model, ds, bits=32, progress=False)
    with pytest.raises(ValueError, match='img_size'):
        model_transform(model, 32)


# ---------------------------------------------------------------------------------------------- eval
@needs_fmnist
def test_eval_metrics_json_equals_evaluate(run, tmp_path, capsys):
    from deephash_zoo.data import build_retrieval_data

    path, model = run
    out = tmp_path / 'eval'
    assert run_main(eval_main, ['--checkpoint', str(path), '--data', 'fashion-mnist', '--query-subset', str(NQ),
                                '--db-subset', str(NDB), '--out', str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert 'mAP@all' in printed and 'P@100' in printed and 'database index (stable)' in printed
    report = json.loads((out / 'metrics.json').read_text())
    assert report['model'] == 'dath_n_16' and report['img_size'] == IMG
    assert report['machine']['cpu'] and report['machine']['device'] == 'cpu'  # where it was scored (the card says)
    assert report['weights_sha256'] == weights_sha256(path / 'checkpoint' / 'model.safetensors')
    assert report['protocol']['num_queries'] == NQ and report['protocol']['num_database'] == NDB
    assert sorted(report['results']) == ['16', '8']

    # the same codes, computed here: documented protocol subsets, model.encode in the CLI's batches of 64
    sets = build_retrieval_data('fashion-mnist', seed=0, transform=model_transform(model, IMG))
    q = sets['query'].subset(np.sort(np.random.default_rng([0, 1]).choice(len(sets['query']), NQ, replace=False)))
    db = sets['database'].subset(np.sort(np.random.default_rng([0, 2]).choice(len(sets['database']), NDB,
                                                                              replace=False)))
    for bits in (8, 16):
        codes = [np.concatenate([model.encode(torch.stack([ds[i][0] for i in range(s, min(s + 64, len(ds)))]),
                                              bits=bits, packed=True).numpy() for s in range(0, len(ds), 64)])
                 for ds in (q, db)]
        expected = evaluate(codes[0], codes[1], q.labels, db.labels, topk=None, ns=EVAL_NS, bits=bits)
        got = dict(report['results'][str(bits)])
        extra = {k: got.pop(k) for k in ('map_at_1000', 'random_codes', 'distinct_codes')}
        assert got == expected
        assert extra['map_at_1000'] == mean_average_precision(codes[0], codes[1], q.labels, db.labels,
                                                              min(1000, NDB), bits=bits).map
        rq, rd = random_codes(NQ, NDB, bits, seed=0)
        chance = evaluate(rq, rd, q.labels, db.labels, topk=None, ns=EVAL_NS, bits=bits)
        chance_at = mean_average_precision(rq, rd, q.labels, db.labels, min(1000, NDB), bits=bits).map
        assert extra['random_codes'] == {'map': chance['map'], 'map_at_1000': chance_at,
                                         'p_at_100': chance['p_at_n']['100'], 'p_at_n': chance['p_at_n'],
                                         'precision_radius2': chance['precision_radius2'],
                                         'map_tie_aware': chance['map_tie_aware'], 'seed': 0}
        distinct = len({row.tobytes() for row in codes[0]})
        assert extra['distinct_codes'] == {'num_items': NQ, 'num_distinct': distinct, 'fraction': distinct / NQ}
    for name in ('pr_curve.png', 'p_at_n.png'):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert not list(out.glob('.*tmp*'))  # atomic writes leave no temporaries


@needs_fmnist
def test_eval_default_out_one_length_and_topk(run, capsys):
    path, _ = run
    assert run_main(eval_main, ['--checkpoint', str(path / 'checkpoint'), '--bits', '8', '--topk', '50',
                                '--query-subset', '10', '--db-subset', '60', '--no-plots', '--no-progress']) == 0
    report = json.loads((path / 'eval' / 'metrics.json').read_text())  # RUN/eval for RUN/checkpoint
    assert list(report['results']) == ['8'] and report['results']['8']['map_topk'] == 50
    assert 'mAP@50' in capsys.readouterr().out


@pytest.mark.parametrize('args, needles', [
    (['--checkpoint', '{tmp}/missing'], ['missing: neither a checkpoint folder']),
    (['--checkpoint', '{run}', '--bits', '32'], ['code lengths (8, 16); got --bits 32']),
    (['--checkpoint', '{run}', '--topk', '0'], None),  # argparse: exit status 2 with usage
    (['--checkpoint', '{run}', '--out', '{tmp}/notes.txt'], ['notes.txt: is a file; give a folder']),
    (['--checkpoint', '{run}', '--img-size', '0'], ['img_size must be an integer >= 63']),  # was the default size
    (['--checkpoint', '{run}', '--seed', '-1'], ['--seed must be >= 0']),  # numpy's 'expected non-negative integer'
])
def test_eval_errors(run, tmp_path, capsys, args, needles):
    (tmp_path / 'notes.txt').write_text('mine')
    args = [a.format(tmp=tmp_path, run=run[0]) for a in args]
    if needles is None:
        with pytest.raises(SystemExit) as e:
            run_main(eval_main, args)
        assert e.value.code == 2 and "positive integer or 'all'" in capsys.readouterr().err
    else:
        _one_line_error(capsys, run_main(eval_main, args), *needles)


# --------------------------------------------------------------------------------------------- index
@pytest.fixture(scope='module')
def built_index(tiny_index):
    """The run's 16-bit index of NDB Fashion-MNIST training images (shared, conftest)."""
    return tiny_index


def test_index_build_and_query_round_trip(run, built_index, tmp_path, capsys):
    from deephash_zoo.data import build_retrieval_data

    capsys.readouterr()
    manifest = json.loads((built_index / 'manifest.json').read_text())
    assert manifest['model'] == 'dath_n_16' and manifest['bits'] == 16 and manifest['model_bits'] == [8, 16]
    assert manifest['weights_sha256'] == weights_sha256(run[0] / 'checkpoint' / 'model.safetensors')
    assert manifest['dataset'] == 'fashion-mnist' and manifest['img_size'] == IMG and manifest['num_items'] == NDB

    db = build_retrieval_data('fashion-mnist', seed=0)['database']
    picks = np.sort(np.random.default_rng([0, 2]).choice(len(db), NDB, replace=False))
    assert manifest['ids'] == [db.ids[i] for i in picks]
    item = db.ids[picks[7]]
    db.load_image(int(picks[7])).save(tmp_path / 'q.png')
    assert run_main(index_main, ['query', '--index', str(built_index), '--image', str(tmp_path / 'q.png'),
                                 '-k', str(NDB), '--json']) == 0
    result = json.loads(capsys.readouterr().out)['results'][0]
    assert result['distances'][0] == 0 and result['distances'] == sorted(result['distances'])
    assert result['distances'][result['ids'].index(item)] == 0  # itself, at distance 0 (random codes tie a lot)

    assert run_main(index_main, ['query', '--index', str(built_index), '--image', str(tmp_path / 'q.png'),
                                 str(tmp_path / 'q.png'), '-k', '3']) == 0
    printed = capsys.readouterr().out
    assert printed.count('q.png:') == 2 and '16-bit codes of dath_n_16' in printed


@pytest.fixture(scope='module')
def synthetic_index(run, module_tmp):
    """An index whose manifest names the run's checkpoint, built from random codes (no data set needed)."""
    from deephash_zoo.retrieval.index import HashIndex

    path, _ = run
    ckpt = path / 'checkpoint'
    codes = np.packbits(np.random.default_rng(0).random((30, 16)) < 0.5, axis=1)
    extra = dict(model='dath_n_16', model_bits=[8, 16], weights_sha256=weights_sha256(ckpt / 'model.safetensors'),
                 checkpoint=str(ckpt), dataset='fashion-mnist', img_size=IMG)
    return HashIndex.build(codes, 16, manifest_extra=extra).save(module_tmp.mktemp('syn') / 'index')


@pytest.mark.parametrize('arch, bits, seed, needle', [
    ('dath_s_16', (16,), 0, "model mismatch: the index holds codes of 'dath_n_16'"),
    ('dath_n_16', (32,), 0, 'code length mismatch: the index holds 16-bit codes'),
    ('dath_n_16', (8, 16), 1, 'weights mismatch'),
])
def test_query_refuses_another_checkpoint(synthetic_index, tmp_path, capsys, arch, bits, seed, needle):
    other = _save(_model(arch, bits, seed), tmp_path)
    img = tmp_path / 'a.png'
    from PIL import Image

    Image.new('RGB', (30, 30), (200, 10, 10)).save(img)
    code = run_main(index_main, ['query', '--index', str(synthetic_index), '--image', str(img),
                                 '--checkpoint', str(other)])
    _one_line_error(capsys, code, needle)


def test_query_and_build_errors(run, synthetic_index, tmp_path, capsys):
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    _one_line_error(capsys, run_main(index_main, ['query', '--index', str(synthetic_index), '--image', str(bad)]),
                    'bad.png: cannot open image')
    _one_line_error(capsys, run_main(index_main, ['query', '--index', str(tmp_path / 'nope'), '--image', str(bad)]),
                    'no index folder')
    _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(tmp_path / 'missing'),
                                                  '--out', str(tmp_path / 'i')]), 'neither a checkpoint folder')
    _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(run[0]), '--out', str(synthetic_index)]),
                    'exists and holds an index; pass --overwrite to replace it')
    photos = tmp_path / 'photos'
    photos.mkdir()
    (photos / 'cat.jpg').write_bytes(b'jpeg')
    # refused, --overwrite or not, before the checkpoint is read (the last --checkpoint, a missing one, wins)
    for out in (photos, photos / 'cat.jpg' / 'idx'):
        _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(run[0]), '--out', str(out),
                                                      '--overwrite', '--checkpoint', str(tmp_path / 'missing')]),
                        'refusing to replace it' if out == photos else 'where a folder would go')
    for flag, value, needle in (('--img-size', '0', 'img_size must be an integer >= 63'), ('--seed', '-1', '--seed')):
        _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(run[0]), flag, value,
                                                      '--out', str(tmp_path / 'i')]), needle)
    _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(run[0]), '--bits', '12',
                                                  '--out', str(tmp_path / 'i')]), 'code lengths (8, 16)')


def test_query_names_a_moved_checkpoint_and_a_grid_path_it_cannot_write(run, tmp_path, capsys):
    import shutil

    from PIL import Image

    moved = tmp_path / 'run'
    shutil.copytree(run[0], moved)
    index = tmp_path / 'index'
    assert run_main(index_main, ['build', '--checkpoint', str(moved), '--db-subset', '40', '--out', str(index)]) == 0
    image = tmp_path / 'q.png'
    Image.new('RGB', (30, 30), (10, 200, 10)).save(image)
    (tmp_path / 'afile').write_text('mine')
    capsys.readouterr()
    # refused before the search (it was exit 3, errno 17, after it)
    _one_line_error(capsys, run_main(index_main, ['query', '--index', str(index), '--image', str(image),
                                                  '--grid', str(tmp_path / 'afile' / 'grid.png')]),
                    f'a file stands at {tmp_path / "afile"}, where a folder would go')
    shutil.move(moved, tmp_path / 'elsewhere')
    _one_line_error(capsys, run_main(index_main, ['query', '--index', str(index), '--image', str(image)]),
                    f'the index was built with the checkpoint {moved}', 'pass --checkpoint with the same weights')
    assert run_main(index_main, ['query', '--index', str(index), '--image', str(image),
                                 '--checkpoint', str(tmp_path / 'elsewhere')]) == 0


def test_query_with_synthetic_index_encodes_with_manifest_checkpoint(synthetic_index, tmp_path, capsys):
    from PIL import Image

    Image.new('RGB', (30, 30), (10, 200, 10)).save(tmp_path / 'g.png')
    assert run_main(index_main, ['query', '--index', str(synthetic_index), '--image', str(tmp_path / 'g.png'),
                                 '-k', '4', '--json']) == 0
    result = json.loads(capsys.readouterr().out)['results'][0]
    assert len(result['ids']) == 4 and all(isinstance(i, int) for i in result['ids'])


@pytest.mark.parametrize('drop', [('model',), ('weights_sha256',), ('model', 'weights_sha256')])
def test_an_index_that_cannot_be_checked_is_refused_unless_asked(synthetic_index, tmp_path, capsys, drop):
    """A manifest stripped of the model or the weights digest cannot show which weights made its codes: queries
    are refused, and --unverified-index accepts it with a warning."""
    import shutil

    from PIL import Image

    index = tmp_path / 'index'
    shutil.copytree(synthetic_index, index)
    manifest = json.loads((index / 'manifest.json').read_text())
    for key in drop:
        manifest.pop(key)
    (index / 'manifest.json').write_text(json.dumps(manifest))
    Image.new('RGB', (30, 30), (10, 10, 200)).save(tmp_path / 'b.png')
    argv = ['query', '--index', str(index), '--image', str(tmp_path / 'b.png'), '-k', '2']
    _one_line_error(capsys, run_main(index_main, argv), f'the index manifest records no {drop[0]}',
                    '--unverified-index')
    assert run_main(index_main, [*argv, '--unverified-index']) == 0
    assert 'warning: the index manifest records no' in capsys.readouterr().err


def test_searcher_refuses_a_model_that_did_not_make_the_index(synthetic_index):
    from deephash_zoo.retrieval.index import HashIndex
    from deephash_zoo.retrieval.search import HashSearcher

    index = HashIndex.load(synthetic_index)
    with pytest.raises(ValueError, match="model mismatch: the index holds codes of 'dath_n_16'"):
        HashSearcher(_model('dath_s_16', (16,), 0), index, transform=lambda im: im)
    with pytest.raises(ValueError, match='code length mismatch'):
        HashSearcher(_model('dath_n_16', (32,), 0), index, transform=lambda im: im)


def test_index_build_from_a_folder_of_images_then_query(run, tmp_path, capsys):
    from PIL import Image

    photos = tmp_path / 'photos'
    (photos / 'sub').mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ('a.png', 'sub/b.jpg', 'c.png'):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photos / name)
    (photos / 'broken.png').write_bytes(b'nope')
    out = tmp_path / 'index'
    assert run_main(index_main, ['build', '--checkpoint', str(run[0]), '--images', str(photos), '--out', str(out),
                                 '--no-progress']) == 0
    said = capsys.readouterr()
    assert '3 images of' in said.out and '(1 skipped)' in said.out and 'skipped broken.png' in said.err
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['ids'] == ['a.png', 'c.png', 'sub/b.jpg'] and manifest['model'] == 'dath_n_16'
    assert manifest['weights_sha256'] == weights_sha256(run[0] / 'checkpoint' / 'model.safetensors')
    assert run_main(index_main, ['query', '--index', str(out), '--image', str(photos / 'sub' / 'b.jpg'), '-k', '3',
                                 '--json']) == 0
    result = json.loads(capsys.readouterr().out)['results'][0]
    assert result['distances'][0] == 0 and 'sub/b.jpg' in [i for i, d in zip(result['ids'], result['distances'],
                                                                            strict=True) if d == 0]
    _one_line_error(capsys, run_main(index_main, ['build', '--checkpoint', str(run[0]), '--images', str(photos),
                                                  '--data', 'fashion-mnist', '--out', str(tmp_path / 'x')]),
                    '--images indexes a folder; --data names a benchmark')


def _photo_index(run, tmp_path):
    """A flat index of three random photos, built with ``build --images``; returns (photos folder, index)."""
    from PIL import Image

    photos, out = tmp_path / 'photos', tmp_path / 'photo-index'
    photos.mkdir()
    rng = np.random.default_rng(7)
    for name in ('a.png', 'b.png', 'c.png'):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(photos / name)
    assert run_main(index_main, ['build', '--checkpoint', str(run[0]), '--images', str(photos), '--out', str(out),
                                 '--no-progress']) == 0
    return photos, out


def test_grid_draws_a_folder_index_from_its_files(run, tmp_path, capsys):
    """The README's ``query --grid`` works for ``build --images`` indexes too: the neighbours are the indexed
    files themselves, opened by id."""
    from PIL import Image

    from deephash_zoo.retrieval.grid import GridLayout

    photos, index = _photo_index(run, tmp_path)
    png = tmp_path / 'grid.png'
    assert run_main(index_main, ['query', '--index', str(index), '--image', str(photos / 'b.png'), '-k', '3',
                                 '--grid', str(png)]) == 0
    assert f'wrote {png}' in capsys.readouterr().out
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert Image.open(png).size == GridLayout(rows=1, cols=4).size  # the query and its three neighbours


def test_a_truncated_checkpoint_is_named_not_called_a_mismatch(run, synthetic_index, tmp_path, capsys):
    """A cut-short copy of the index's own checkpoint has another digest too; the message names the corrupt file."""
    import shutil

    from PIL import Image

    bad = tmp_path / 'ckpt'
    shutil.copytree(run[0] / 'checkpoint', bad)
    weights = bad / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:5000])
    Image.new('RGB', (30, 30), (10, 200, 10)).save(tmp_path / 'g.png')
    code = run_main(index_main, ['query', '--index', str(synthetic_index), '--image', str(tmp_path / 'g.png'),
                                 '--checkpoint', str(bad)])
    _one_line_error(capsys, code, 'model.safetensors: corrupt or truncated safetensors file')


def test_an_unreachable_hub_exits_2_as_the_readme_says(tmp_path, monkeypatch, capsys):
    """No network reads as a checkpoint not found (exit 2); the README and _common's table say so, not 3."""
    from pathlib import Path

    import huggingface_hub
    from huggingface_hub import constants

    import deephash_zoo.cli._common as common

    def unreachable(*args, **kwargs):
        raise ConnectionError('Network is unreachable')

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, 'snapshot_download', unreachable)
    monkeypatch.setattr(constants, 'is_offline_mode', lambda: False)
    _one_line_error(capsys, run_main(eval_main, ['--checkpoint', 'hf-hub:deephash-zoo/nothing']),
                    'the Hub could not be reached')
    readme = ' '.join((Path(__file__).resolve().parents[1] / 'README.md').read_text().split())
    statuses = readme.split('exit status 0 done', 1)[1].split('130 interrupted', 1)[0]
    bad_request, system = statuses.split(', 3 ', 1)
    assert 'Hub' in bad_request and 'network' not in system and 'Hub' not in system, statuses
    assert 'no network' not in (common.__doc__ or '')


def test_python_api_refusals_come_before_the_work(run, tmp_path, monkeypatch):
    """run_evaluation checked topk only after encoding both sets ('all', what metrics.json writes, is natural to
    pass); a device this machine lacks reached torch's driver error; write_evaluation took no str path."""
    import deephash_zoo.retrieval.encoding as encoding
    from deephash_zoo.evaluation import EvalOptions, run_evaluation, write_evaluation
    from deephash_zoo.hub.checkpoint import load_checkpoint

    run = run[0]  # the run folder
    monkeypatch.setattr(encoding, 'encode_dataset_lengths', lambda *a, **k: 1 / 0)  # never reached
    for topk in ('all', 0, 2.5):
        with pytest.raises(ValueError, match=f'topk must be a positive integer, or None .*got {topk!r}'):
            run_evaluation(EvalOptions(checkpoint=str(run), topk=topk, query_subset=10, db_subset=20, plots=False))
    if not torch.cuda.is_available():
        for device in ('cuda', 'cuda:0'):
            with pytest.raises(ValueError, match=f"device '{device}': no CUDA device is available"):
                run_evaluation(EvalOptions(checkpoint=str(run), device=device, plots=False))
            with pytest.raises(ValueError, match=f"device '{device}': no CUDA device is available"):
                load_checkpoint(run, device=device)
    with pytest.raises(ValueError, match="device 'gpu': not a device name torch knows"):
        load_checkpoint(run, device='gpu')
    monkeypatch.undo()
    ev = run_evaluation(EvalOptions(checkpoint=str(run), query_subset=10, db_subset=20, plots=False, progress=False))
    assert 'metrics.json' in write_evaluation(ev, str(tmp_path / 'ev'), plots=False, grid_rows=0)
