"""FAISS binary index wrapper: round trips, exactness of 'flat', manifest checks, atomic saves."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

pytest.importorskip('faiss')

from deephash_zoo.retrieval import index as index_mod  # noqa: E402
from deephash_zoo.retrieval.codes import as_packed, hamming_distances  # noqa: E402
from deephash_zoo.retrieval.index import HashIndex  # noqa: E402

BITS = 16
MODEL = 'dath_alexnet_16'


@pytest.fixture(scope='module')
def codes():
    """16-bit codes: 600 items over 65,536 codes with distances 0..16, so ties are everywhere."""
    rng = np.random.default_rng(0)
    db = np.where(rng.random((600, BITS)) < 0.5, -1, 1).astype(np.int8)
    q = np.where(rng.random((25, BITS)) < 0.5, -1, 1).astype(np.int8)
    return as_packed(q)[0], as_packed(db)[0]


def brute_force(q, db, k):
    """Top k by (Hamming distance, database index)."""
    d = hamming_distances(q, db)
    ids = np.argsort(d, axis=1, kind='stable')[:, :k]
    return ids, np.take_along_axis(d, ids, axis=1)


def test_flat_is_exact_with_index_tie_break_and_round_trips(codes, tmp_path):
    q, db = codes
    idx = HashIndex.build(db, BITS, kind='flat', manifest_extra={'model': MODEL, 'weights_sha256': 'ab' * 32})
    want_ids, want_d = brute_force(q, db, 20)
    ids, d = idx.search(q, 20)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(ids, want_ids)  # FAISS's flat heap keeps the smaller id on equal distance

    path = idx.save(tmp_path / 'idx')
    assert sorted(p.name for p in path.iterdir()) == ['index.faiss', 'manifest.json']
    manifest = json.loads((path / 'manifest.json').read_text())
    assert manifest['kind'] == 'flat' and manifest['bits'] == BITS and manifest['num_items'] == 600
    assert manifest['ids'] == list(range(600)) and manifest['model'] == MODEL
    assert manifest['weights_sha256'] == 'ab' * 32 and len(manifest['index_sha256']) == 64

    loaded = HashIndex.load(path)
    assert (loaded.kind, loaded.bits, len(loaded)) == ('flat', BITS, 600)
    ids2, d2 = loaded.search(q, 20, model=MODEL)
    np.testing.assert_array_equal(ids2, want_ids)
    np.testing.assert_array_equal(d2, want_d)
    # sign codes and a single 1-D code are accepted too
    sign = np.unpackbits(q, axis=1).astype(np.int8) * 2 - 1
    np.testing.assert_array_equal(loaded.search(sign, 20)[0], want_ids)
    np.testing.assert_array_equal(loaded.search(sign[0], 20)[0], want_ids[:1])


@pytest.mark.parametrize('kind', ['hnsw', 'ivf'])
def test_approximate_indexes_round_trip(codes, tmp_path, kind):
    q, db = codes
    opts = {'ef_search': 600} if kind == 'hnsw' else {'nlist': 8, 'nprobe': 8}
    idx = HashIndex.build(db, BITS, kind=kind, ids=[f'img{i:04d}' for i in range(600)], **opts)
    _, want_d = brute_force(q, db, 10)
    ids, d = idx.search(q, 10)
    # a near-exhaustive search returns the exact distances; the order among equal distances is FAISS's own
    np.testing.assert_array_equal(d, want_d)
    assert ids.dtype == object and ids[0, 0].startswith('img')
    d_check = hamming_distances(q, db)[np.arange(25)[:, None], np.vectorize(lambda s: int(s[3:]))(ids)]
    np.testing.assert_array_equal(d_check, d)

    loaded = HashIndex.load(idx.save(tmp_path / kind))
    ids2, d2 = loaded.search(q, 10)
    np.testing.assert_array_equal(d2, d)
    np.testing.assert_array_equal(ids2, ids)
    assert loaded.manifest['params'] == idx.manifest['params']


def test_tuning_knobs(codes):
    _, db = codes
    ivf = HashIndex.build(db, BITS, kind='ivf', nlist=4, nprobe=1)
    ivf.nprobe = 3
    assert ivf.nprobe == 3 and ivf.manifest['params']['nprobe'] == 3
    with pytest.raises(AttributeError, match="applies to 'hnsw'"):
        _ = ivf.ef_search
    with pytest.raises(ValueError, match='nlist must be between 1'):
        HashIndex.build(db, BITS, kind='ivf', nlist=10_000)
    with pytest.raises(ValueError, match='kind must be one of'):
        HashIndex.build(db, BITS, kind='lsh')


def test_k_larger_than_index_is_clipped(codes):
    q, db = codes
    idx = HashIndex.build(db[:5], BITS)
    ids, d = idx.search(q[:2], 50)
    assert ids.shape == (2, 5) and set(ids[0]) == set(range(5))


def test_mismatched_bits_and_model_raise(codes):
    q, db = codes
    idx = HashIndex.build(db, BITS, manifest_extra={'model': MODEL})
    with pytest.raises(ValueError, match='query codes have 8 bits but the index holds 16-bit codes'):
        idx.search(np.ones((2, 8), np.int8), 5)
    with pytest.raises(ValueError, match='query codes have 24 bits but the index holds 16-bit codes'):
        idx.search(np.zeros((2, 3), np.uint8), 5)
    with pytest.raises(ValueError, match="model mismatch: the index was built from 'dath_alexnet_16' codes"):
        idx.search(q, 5, model='admth_resnet50_16')
    with pytest.raises(ValueError, match='the index manifest records no model'):
        HashIndex.build(db, BITS).search(q, 5, model=MODEL)
    with pytest.raises(ValueError, match='k must be a positive integer'):
        idx.search(q, 0)
    with pytest.raises(ValueError, match='non-binary value 0'):
        idx.search(np.zeros((1, 16), np.int8), 5)
    with pytest.raises(ValueError, match='reserved keys'):
        HashIndex.build(db, BITS, manifest_extra={'bits': 8})
    with pytest.raises(ValueError, match='got 3 ids for 600 codes'):
        HashIndex.build(db, BITS, ids=[1, 2, 3])


def test_load_errors(codes, tmp_path):
    _, db = codes
    with pytest.raises(FileNotFoundError, match='no index folder'):
        HashIndex.load(tmp_path / 'nothing')
    path = HashIndex.build(db, BITS).save(tmp_path / 'idx')
    manifest = path / 'manifest.json'
    good = manifest.read_text()

    manifest.write_text('{"kind": "flat", "bits": 16')  # truncated JSON
    with pytest.raises(ValueError, match='corrupt index manifest .*not valid JSON'):
        HashIndex.load(path)
    bad = json.loads(good)
    bad['ids'] = bad['ids'][:-1]
    manifest.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match='corrupt index manifest .*ids must be a list with num_items entries'):
        HashIndex.load(path)
    manifest.write_text(json.dumps({**json.loads(good), 'kind': 'lsh'}))
    with pytest.raises(ValueError, match='corrupt index manifest .*kind'):
        HashIndex.load(path)

    manifest.write_text(good)
    blob = (path / 'index.faiss').read_bytes()
    (path / 'index.faiss').write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match='corrupt index: .*sha256'):
        HashIndex.load(path)
    no_sum = json.loads(good)
    del no_sum['index_sha256']
    manifest.write_text(json.dumps(no_sum))
    with pytest.raises(ValueError, match='corrupt index file'):
        HashIndex.load(path)
    (path / 'index.faiss').unlink()
    with pytest.raises(FileNotFoundError, match='index.faiss is missing'):
        HashIndex.load(path)


def test_failed_save_leaves_nothing_behind(codes, tmp_path, monkeypatch):
    _, db = codes
    idx = HashIndex.build(db, BITS, manifest_extra={'model': MODEL})
    faiss = index_mod._faiss()

    def write_half_then_fail(index, fname):
        with open(fname, 'wb') as f:
            f.write(b'IBxF half an index')
        raise OSError('disk full')

    monkeypatch.setattr(faiss, 'write_index_binary', write_half_then_fail)
    with pytest.raises(OSError, match='disk full'):
        idx.save(tmp_path / 'new')
    assert list(tmp_path.iterdir()) == []  # no target, no temporary sibling

    monkeypatch.undo()
    path = idx.save(tmp_path / 'existing')
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(faiss, 'write_index_binary', write_half_then_fail)
    with pytest.raises(OSError, match='disk full'):
        idx.save(path, overwrite=True)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # the old index is untouched
    assert [p.name for p in tmp_path.iterdir()] == ['existing']


def test_save_refuses_to_clobber(codes, tmp_path):
    _, db = codes
    idx = HashIndex.build(db, BITS)
    path = idx.save(tmp_path / 'idx')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        idx.save(path)
    (tmp_path / 'photos').mkdir()
    (tmp_path / 'photos' / 'cat.jpg').write_bytes(b'jpeg')
    with pytest.raises(FileExistsError, match='a folder of other files, without manifest.json; refusing'):
        idx.save(tmp_path / 'photos', overwrite=True)
    with pytest.raises(FileExistsError, match='a file, not an index folder with manifest.json; refusing'):
        idx.save(tmp_path / 'photos' / 'cat.jpg', overwrite=True)
    with pytest.raises(FileExistsError, match=r'a file stands at .*cat\.jpg, where a folder would go'):
        idx.save(tmp_path / 'photos' / 'cat.jpg' / 'sub' / 'idx')  # was NotADirectoryError from mkdir
    assert (tmp_path / 'photos' / 'cat.jpg').read_bytes() == b'jpeg'
    (tmp_path / 'empty').mkdir()
    assert len(HashIndex.load(idx.save(tmp_path / 'empty'))) == len(db)  # an empty folder holds nothing to lose
    idx2 = HashIndex.build(db[:10], BITS, kind='flat')
    idx2.save(path, overwrite=True)
    assert len(HashIndex.load(path)) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty', 'idx', 'photos']


def test_missing_faiss_says_how_to_install(codes, monkeypatch):
    _, db = codes
    monkeypatch.setitem(sys.modules, 'faiss', None)
    with pytest.raises(ImportError, match=r"pip install 'deephash-zoo\[retrieval\]'"):
        HashIndex.build(db, BITS)


def test_tuning_values_faiss_cannot_take_and_repeated_ids_are_refused():
    codes = np.packbits(np.random.default_rng(0).random((6, 16)) > 0.5, axis=1)
    refused = {  # hnsw_m 0 aborted the process in a FAISS assertion; ef_search -1 answered -1 ids
        'hnsw_m must be an integer >= 2, got 0': dict(kind='hnsw', hnsw_m=0),
        'ef_search must be an integer >= 1, got -1': dict(kind='hnsw', ef_search=-1),
        'ef_construction must be an integer >= 1, got 2.5': dict(kind='hnsw', ef_construction=2.5),
        'nprobe must be an integer >= 1, got 0': dict(kind='ivf', nprobe=0),
        'nlist must be an integer >= 1, got -1': dict(kind='ivf', nlist=-1),
        "id 'a' is given twice": dict(ids=['a', 'b', 'a', 'c', 'd', 'e']),
        'ids must be all ints or all strings, not a mix': dict(ids=[1, 'a', 2, 3, 4, 5]),
    }
    for message, kwargs in refused.items():
        with pytest.raises(ValueError, match=message):
            HashIndex.build(codes, 16, **kwargs)
    index = HashIndex.build(codes, 16, ids=list('abcdef'))
    with pytest.raises(ValueError, match="id 'c' is given twice"):
        index.add(codes[:1], ids=['c'])
    assert index.add(codes[:1], ids=['g']).ids[-1] == 'g'
    ids, _ = HashIndex.build(codes, 16, kind='hnsw', hnsw_m=2).search(codes, k=1)
    assert (ids >= 0).all()  # the smallest M still answers every query


def test_adding_nothing_changes_nothing(codes):
    """``add(packed[:0])`` said "new ids must be of the type the index has"; an empty batch is no error."""
    _, db = codes
    for ids in (None, list(range(600)), [f'img{i}' for i in range(600)]):
        idx = HashIndex.build(db, BITS, ids=ids)
        assert idx.add(db[:0]) is idx and idx.add([]) is idx and idx.ids == idx.manifest['ids'] and len(idx) == 600
    with pytest.raises(ValueError, match='got 1 ids for 0 codes'):
        idx.add(db[:0], ids=['x'])


def test_what_the_json_manifest_cannot_hold_is_refused_at_build(codes, tmp_path):
    """np.int64 in manifest_extra was accepted by build and failed at save (int64 is not JSON serializable)."""
    _, db = codes
    with pytest.raises(ValueError, match=r"manifest_extra\['x'\] cannot be stored in the JSON manifest: Object of "
                                         'type int64'):
        HashIndex.build(db, BITS, manifest_extra={'x': np.int64(3)})
    with pytest.raises(ValueError, match=r'manifest_extra keys must be strings .*got \(1, 2\)'):
        HashIndex.build(db, BITS, manifest_extra={(1, 2): 'pair'})
    saved = HashIndex.build(db, BITS, manifest_extra={'x': int(np.int64(3)), 'nested': {'a': [1.5, None]}})
    assert HashIndex.load(saved.save(tmp_path / 'idx')).manifest['nested'] == {'a': [1.5, None]}


def test_empty_and_bfloat16_queries(codes):
    """``search([])`` said "sign codes have 0 columns"; bfloat16 torch codes raised numpy's TypeError."""
    torch = pytest.importorskip('torch')
    q, db = codes
    idx = HashIndex.build(db, BITS)
    with pytest.raises(ValueError, match='no queries: pass codes or images'):
        idx.search([], k=2)
    signs = torch.from_numpy(np.unpackbits(q, axis=1).astype(np.float32) * 2 - 1)
    want = idx.search(q, k=5)
    for got, expected in zip(idx.search(signs.to(torch.bfloat16), k=5), want, strict=True):
        np.testing.assert_array_equal(got, expected)
