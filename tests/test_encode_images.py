"""deephash_zoo.encode_images: a folder (or files, or PIL images) to codes in batches, then an index."""
import copy
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import deephash_zoo
from deephash_zoo.retrieval.encoding import model_transform


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp('photos')
    (root / 'sub').mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate(['a.png', 'b.JPG', 'sub/c.png', 'sub/d.webp', 'e.bmp']):
        Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(root / name)
    (root / 'broken.png').write_bytes(b'not an image')
    (root / 'notes.txt').write_text('skipped: not an image suffix')
    return root


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return timm.create_model('dath_n_16', pretrained_cfg_overlay=dict(input_size=(3, 64, 64))).eval()


def test_a_folder_encodes_in_batches_as_the_model_would(photos, model):
    found = deephash_zoo.encode_images(model, photos, batch_size=2, precision='fp32')
    assert found.ids == ['a.png', 'b.JPG', 'e.bmp', 'sub/c.png', 'sub/d.webp']
    assert [name for name, _ in found.skipped] == ['broken.png'] and 'cannot open image' in found.skipped[0][1]
    assert found.codes.shape == (5, 2) and found.codes.dtype == np.uint8 and found.bits == 16
    transform = model_transform(model)
    x = torch.stack([transform(Image.open(photos / i).convert('RGB')) for i in found.ids])
    assert np.array_equal(found.codes, model.encode(x, packed=True).numpy())
    assert found.manifest == {'model': 'dath_n_16', 'model_bits': [16], 'img_size': 64, 'precision': 'fp32'}
    signs = deephash_zoo.encode_images(model, [photos / 'a.png', Image.open(photos / 'e.bmp')], packed=False)
    assert signs.codes.shape == (2, 16) and set(np.unique(signs.codes)) <= {-1, 1}
    assert np.array_equal(np.packbits(signs.codes > 0, axis=1), found.codes[[0, 2]])


def test_two_lines_from_a_folder_to_neighbours(photos, model):
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex

    found = deephash_zoo.encode_images(model, photos)
    index = HashIndex.build(found.codes, found.bits, ids=found.ids, manifest_extra=found.manifest)
    ids, dist = index.search(found.codes[3], k=1)
    assert dist[0, 0] == 0 and found.codes[found.ids.index(ids[0, 0])].tobytes() == found.codes[3].tobytes()


def test_bad_requests(photos, model, tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.jpg: no such image file or folder'):
        deephash_zoo.encode_images(model, tmp_path / 'missing.jpg')  # it said "not a folder of images"
    for array in (np.zeros((2, 64, 64, 3), np.uint8), torch.zeros(2, 3, 64, 64)):  # PIL's AttributeError before
        with pytest.raises(ValueError, match=f'got a {type(array).__name__} .for tensors already transformed'):
            deephash_zoo.encode_images(model, array)
    with pytest.raises(ValueError, match='expected image files or PIL images, got a int among them'):
        deephash_zoo.encode_images(model, [photos / 'a.png', 3])
    with pytest.raises(ValueError, match='no image files'):
        deephash_zoo.encode_images(model, tmp_path)
    with pytest.raises(ValueError, match=r'code lengths \(16,\); got bits=32'):
        deephash_zoo.encode_images(model, photos, bits=32)
    with pytest.raises(ValueError, match='none of the 1 images could be opened'):
        deephash_zoo.encode_images(model, [photos / 'broken.png'])
    with pytest.raises(ValueError, match='batch_size must be a positive integer'):
        deephash_zoo.encode_images(model, photos, batch_size=0)


def test_an_index_from_a_folder_searched_with_images(photos, model, tmp_path):
    """HashIndex.from_images + search(images): the README's two lines; add() and save/load(encoder=)."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex

    index = HashIndex.from_images(model, photos, batch_size=2)
    assert index.ids == ['a.png', 'b.JPG', 'e.bmp', 'sub/c.png', 'sub/d.webp']
    assert index.manifest['skipped'] == 1 and index.skipped[0][0] == 'broken.png'
    assert index.manifest['model'] == 'dath_n_16' and index.manifest['img_size'] == 64
    ids, dist = index.search([photos / 'sub' / 'c.png', Image.open(photos / 'a.png')], k=len(index))
    assert 'sub/c.png' in ids[0][dist[0] == 0] and 'a.png' in ids[1][dist[1] == 0]  # each image finds itself
    found = deephash_zoo.encode_images(model, photos)
    as_files = index.search([photos / i for i in found.ids], k=3)
    assert all(np.array_equal(a, b) for a, b in zip(index.search(found.codes, k=3), as_files, strict=True))

    extra = tmp_path / 'more'
    extra.mkdir()
    Image.open(photos / 'e.bmp').save(extra / 'copy.png')
    index.add(extra)
    assert index.ids[-1] == 'copy.png' and index.manifest['num_items'] == 6 == len(index)
    saved = index.save(tmp_path / 'index')
    with pytest.raises(ValueError, match='no encoder for images'):
        HashIndex.load(saved).search([photos / 'a.png'], k=1)
    loaded = HashIndex.load(saved, encoder=model)
    ids, dist = loaded.search([extra / 'copy.png'], k=len(loaded))
    assert {'copy.png', 'e.bmp'} <= set(ids[0][dist[0] == 0])


def test_an_index_refuses_what_does_not_fit(photos, model):
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex

    index = HashIndex.from_images(model, photos)
    other = timm.create_model('dath_n_32').eval()
    with pytest.raises(ValueError, match=r'code lengths \(32,\); this index holds 16-bit codes'):
        index.attach(other)
    with pytest.raises(ValueError, match="model mismatch: the index was built from 'dath_n_16' codes, the encoder "
                                         "is 'dath_alexnet_16'"):
        index.attach(timm.create_model('dath_alexnet_16'))
    with pytest.raises(ValueError, match='broken.png: cannot open image'):
        index.search([photos / 'broken.png'], k=1)
    with pytest.raises(ValueError, match='query image .*broken.png: cannot open image'):
        index.search([photos / 'a.png', photos / 'broken.png'], k=1)
    with pytest.raises(ValueError, match='string ids: pass ids='):
        index.add(np.zeros((1, 2), dtype=np.uint8))
    numbered = HashIndex.build(np.zeros((2, 2), dtype=np.uint8), 16)
    numbered.add(np.ones((1, 2), dtype=np.uint8))
    assert numbered.ids == [0, 1, 2]
    with pytest.raises(ValueError, match='all ints or all strings'):
        numbered.add(np.ones((1, 2), dtype=np.uint8), ids=['x'])


def test_precision_choices(photos, model, monkeypatch):
    """bf16 autocast on request; fp16 refused on a CPU; auto tries bf16 only on AMX CPUs and keeps it only when
    the first batch's signs agree with fp32's (random weights, whose outputs sit near 0, fall back)."""
    from deephash_zoo import precision as P

    bf16 = deephash_zoo.encode_images(model, photos, precision='bf16')
    assert bf16.precision == 'bf16' == bf16.manifest['precision'] and bf16.codes.shape == (5, 2)
    with pytest.raises(ValueError, match='fp16 is for CUDA'):
        deephash_zoo.encode_images(model, photos, precision='fp16')
    with pytest.raises(ValueError, match='precision must be one of'):
        deephash_zoo.encode_images(model, photos, precision='int4')
    assert P.bf16_support(frozenset({'avx512_bf16', 'amx_bf16'})) == 'amx'
    assert P.bf16_support(frozenset({'avx512_bf16'})) == 'avx512_bf16' and P.bf16_support(frozenset()) == 'none'
    assert P.candidate_precision('cpu', frozenset({'amx_bf16'})) == 'bf16'
    assert P.candidate_precision('cpu', frozenset({'avx512_bf16'})) == 'fp32'
    assert P.candidate_precision('cuda') == 'fp16'
    monkeypatch.setattr(P, 'candidate_precision', lambda device_type, flags=None: 'bf16')
    codes = torch.tensor([[0.9, -0.8, 0.7, -0.6]] * 50)
    assert P.choose_precision('auto', 'cpu', lambda p: codes) == 'bf16'  # signs agree: keep it
    flipped = {'fp32': codes, 'bf16': -codes}
    assert P.choose_precision('auto', 'cpu', lambda p: flipped[p]) == 'fp32'  # they do not: fp32
    assert P.choose_precision('fp32', 'cpu', lambda p: 1 / 0) == 'fp32'  # a fixed choice runs no probe


def test_bf16_on_a_cpu_runs_a_copy_with_bf16_weights_made_once(photos, model):
    """at_precision: bf16 on a CPU is a copy whose weights are bfloat16 (autocast would cast them again on every
    call), taking and giving float32; the model is untouched; the probe and the encoding share one copy; fp32
    and CUDA fp16 run the model itself; encode_images' bf16 codes are that copy's."""
    from deephash_zoo import precision as P

    copy16 = P.at_precision(model, 'bf16', 'cpu')
    assert copy16 is not model and {p.dtype for p in copy16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters()} == {torch.float32} and copy16.bits == model.bits
    assert P.at_precision(model, 'fp32', 'cpu') is model and P.at_precision(model, 'fp16', 'cuda') is model
    with pytest.raises(ValueError, match='fp16 is for CUDA'):
        P.at_precision(model, 'fp16', 'cpu')
    at = P.precision_models(model, 'cpu')
    assert at('bf16') is at('bf16') and at('fp32') is model
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode(), P.autocast('bf16', 'cpu'):
        relaxed, signs = copy16(x), copy16.encode(x)
        expected = copy.deepcopy(model).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
        assert signs.dtype == model.encode(x).dtype
    assert relaxed.dtype == torch.float32
    torch.testing.assert_close(relaxed, expected)
    found = deephash_zoo.encode_images(model, photos, precision='bf16', batch_size=8)
    images = torch.stack([model_transform(model)(Image.open(photos / i).convert('RGB')) for i in found.ids])
    with torch.inference_mode(), P.autocast('bf16', 'cpu'):
        mine = copy16.encode(images, packed=True).numpy()
    np.testing.assert_array_equal(found.codes, mine)


def test_a_searcher_takes_image_files_as_the_index_does(photos, model):
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex
    from deephash_zoo.retrieval.search import HashSearcher

    searcher = HashSearcher(model, HashIndex.from_images(model, photos), model_transform(model))
    by_file = searcher.search([photos / 'a.png', str(photos / 'e.bmp')], k=2)  # an AttributeError ('convert')
    by_image = searcher.search([Image.open(photos / 'a.png'), Image.open(photos / 'e.bmp')], k=2)
    assert by_file.ids == by_image.ids and np.array_equal(by_file.codes, by_image.codes)
    with pytest.raises(ValueError, match='broken.png'):
        searcher.search([photos / 'broken.png'], k=1)
    with pytest.raises(ValueError, match='expected PIL images or image files, got a ndarray'):
        searcher.search([np.zeros((8, 8, 3), np.uint8)], k=1)


def test_sixteen_bit_grey_is_scaled_not_clipped(model, tmp_path):
    """A 16-bit PNG or TIFF and its 8-bit twin are one image: Pillow's convert('RGB') clipped every value above 255
    to white (64% of this image), so the two got codes 12 of 32 bits apart."""
    from deephash_zoo.data.images import ImageRejected, open_rgb
    from deephash_zoo.demo.uploads import UploadError, open_upload
    from deephash_zoo.retrieval.search import _as_image

    grey = np.random.default_rng(1).integers(0, 256, (48, 40), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / 'eight.png')
    for name in ('sixteen.png', 'sixteen.tif'):
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / name)
    Image.fromarray(grey.astype(np.int32) * 257).save(tmp_path / 'int32.tif')  # Pillow's mode I
    twin = np.asarray(open_rgb(tmp_path / 'eight.png'))
    for name in ('sixteen.png', 'sixteen.tif', 'int32.tif'):
        assert np.array_equal(np.asarray(open_rgb(tmp_path / name)), twin), name
        assert np.array_equal(np.asarray(open_upload(tmp_path / name)), twin), name
        with Image.open(tmp_path / name) as image:  # a PIL image handed over as it is
            assert np.array_equal(np.asarray(_as_image(image)), twin), name
    found = deephash_zoo.encode_images(model, [tmp_path / 'eight.png', tmp_path / 'sixteen.png',
                                               Image.open(tmp_path / 'sixteen.tif')], precision='fp32')
    assert (found.codes == found.codes[0]).all()
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / 'float.tif')  # mode F: no range to scale from
    with pytest.raises(ImageRejected, match=r'float\.tif: a floating-point image \(mode F\)'):
        open_rgb(tmp_path / 'float.tif')
    with pytest.raises(UploadError, match='floating-point image'):
        open_upload(tmp_path / 'float.tif')
    found = deephash_zoo.encode_images(model, [tmp_path / 'eight.png', tmp_path / 'float.tif'], precision='fp32')
    assert len(found.ids) == 1 and 'floating-point' in found.skipped[0][1]


def test_an_index_refuses_a_hash_model_on_another_backbone(photos, tmp_path):
    """Every hash_model is architecture 'hash_backbone': the manifest records the backbone too, and attach and
    HashSearcher compared the architecture alone (resnet34 queries were searched against resnet18 codes)."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex, HashSearcher

    small = dict(pretrained_cfg_overlay=dict(input_size=(3, 64, 64)))
    resnet = deephash_zoo.hash_model('test_resnet', bits=16, **small)
    other = deephash_zoo.hash_model('test_efficientnet', bits=16, **small)
    index = HashIndex.from_images(resnet, photos, precision='fp32')
    assert (index.manifest['model'], index.manifest['backbone']) == ('hash_backbone', 'test_resnet')
    with pytest.raises(ValueError, match=r"^model mismatch: the index was built from 'hash_backbone' \(backbone "
                                         r"'test_resnet'\) codes, the encoder is 'hash_backbone' \(backbone "
                                         r"'test_efficientnet'\)$"):
        index.attach(other)
    with pytest.raises(ValueError, match=r"the index holds codes of 'hash_backbone' \(backbone 'test_resnet'\), "
                                         r"the model is 'hash_backbone' \(backbone 'test_efficientnet'\)"):
        HashSearcher(other, index, model_transform(other))
    assert index.attach(deephash_zoo.hash_model('test_resnet', bits=16, **small)).encoder is not resnet
    saved = index.save(tmp_path / 'index')
    manifest = json.loads((saved / 'manifest.json').read_text())
    del manifest['backbone']  # an index saved before backbones were recorded: its architecture alone is checked
    (saved / 'manifest.json').write_text(json.dumps(manifest))
    assert HashIndex.load(saved, encoder=other).encoder is other


def test_one_image_or_file_is_one_query(photos, model):
    """A PIL image is not a sequence of images (TypeError: not iterable), nor a path string one of characters
    ("i: cannot open image"); an array given to HashSearcher.search is codes, searched by its index."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex, HashSearcher

    one = Image.open(photos / 'a.png')
    found = deephash_zoo.encode_images(model, one, precision='fp32')
    assert found.ids == ['0'] and np.array_equal(found.codes, deephash_zoo.encode_images(
        model, [photos / 'a.png'], precision='fp32').codes)
    index = HashIndex.from_images(model, photos, precision='fp32')
    ids, dist = index.search(one, k=2)
    assert ids.shape == (1, 2) and dist[0, 0] == 0
    searcher = HashSearcher(model, index, model_transform(model))
    by_path = searcher.search(str(photos / 'a.png'), k=2)
    assert by_path.ids == searcher.search(one, k=2).ids == searcher.search([photos / 'a.png'], k=2).ids
    assert by_path.codes.shape == (1, 2)
    with pytest.raises(ValueError, match='got a ndarray; to search with codes, call searcher.index.search'):
        searcher.search(np.zeros((1, 2), np.uint8), k=2)  # "truth value of an array is ambiguous"


def test_an_index_makes_its_bf16_copy_once_per_model(photos, model, monkeypatch):
    """Every image search and add deep-copied and cast the whole model; the copy is now kept, and made again
    when the weights change through torch or another model is attached (never stale codes)."""
    pytest.importorskip('faiss')
    from deephash_zoo import precision as P
    from deephash_zoo.retrieval import HashIndex

    made = []
    real = P.at_precision
    monkeypatch.setattr(P, 'at_precision', lambda m, p, d: made.append(p) or real(m, p, d))
    mine = copy.deepcopy(model)
    index = HashIndex.from_images(mine, photos, precision='bf16')
    for _ in range(3):
        index.search(photos / 'a.png', k=1)
    index.add([photos / 'e.bmp'], ids=['e again'])
    assert made.count('bf16') == 1
    with torch.no_grad():  # every code bit flips
        for weight in mine.get_classifier().parameters():
            weight.neg_()
    ids, dist = index.search(photos / 'a.png', k=len(index))
    assert dist[0][list(ids[0]).index('a.png')] == 16 and made.count('bf16') == 2
    index.attach(mine).search(photos / 'a.png', k=1)
    assert made.count('bf16') == 3


def test_encoding_leaves_the_model_as_it_was(photos, model):
    """encode_images and HashSearcher put the caller's model in eval mode for good; a device the machine lacks
    gave torch's NVIDIA driver error."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex, HashSearcher

    mine = copy.deepcopy(model).train()
    mine.get_classifier().eval()  # a partly frozen model keeps its parts' modes too
    modes = [m.training for m in mine.modules()]
    found = deephash_zoo.encode_images(mine, photos, precision='fp32')
    assert [m.training for m in mine.modules()] == modes
    assert np.array_equal(found.codes, deephash_zoo.encode_images(model, photos, precision='fp32').codes)
    index = HashIndex.from_images(mine, photos, precision='fp32')
    HashSearcher(mine, index, model_transform(mine)).search([photos / 'a.png'], k=1)
    index.search([photos / 'a.png'], k=1)
    assert [m.training for m in mine.modules()] == modes
    with pytest.raises(ValueError, match="^device 'gpu': not a device name torch knows"):
        deephash_zoo.encode_images(mine, photos, device='gpu')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device 'cuda': no CUDA device is available on this machine$"):
            deephash_zoo.encode_images(mine, photos, device='cuda')


def test_added_images_get_their_own_ids(photos, model):
    """ids given with images are one per image given (a skipped file's dropped with it: "got 2 ids for 1 codes"
    did not say which file); PIL images added without ids continue the numbering ('0' was given twice)."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex

    index = HashIndex.from_images(model, [photos / 'a.png'], precision='fp32')
    index.add([photos / 'broken.png', photos / 'e.bmp'], ids=['b1', 'b2'])
    assert index.ids == [str(photos / 'a.png'), 'b2'] and index.manifest['skipped'] == 1
    assert index.skipped[-1][0] == str(photos / 'broken.png')
    with pytest.raises(ValueError, match='got 1 ids for 2 images; expected one id per image given'):
        index.add([photos / 'broken.png', photos / 'b.JPG'], ids=['x'])
    with pytest.raises(ValueError, match=r'got 1 ids for 6 images; .* 1 skipped, first .*broken.png: cannot open'):
        index.add(photos, ids=['x'])
    assert len(index) == 2 and index.manifest['skipped'] == 1  # a refused add adds nothing
    pictures = HashIndex.from_images(model, [Image.open(photos / 'a.png'), Image.open(photos / 'e.bmp')])
    pictures.add([Image.open(photos / 'b.JPG')]).add(Image.open(photos / 'a.png'))
    assert pictures.ids == ['0', '1', '2', '3']
    numbered = HashIndex.build(np.zeros((2, 2), np.uint8), 16, ids=[5, 7]).attach(model)
    assert numbered.add(Image.open(photos / 'a.png')).ids == [5, 7, 8]


def test_messages_name_the_problem(photos, model):
    """bits='32' was reported as "got bits=32"; HashSearcher.encode([]) failed in torch.stack."""
    pytest.importorskip('faiss')
    from deephash_zoo.retrieval import HashIndex, HashSearcher

    with pytest.raises(ValueError, match=r"code lengths \(16,\); got bits='16'"):
        deephash_zoo.encode_images(model, photos, bits='16')
    searcher = HashSearcher(model, HashIndex.from_images(model, photos), model_transform(model))
    with pytest.raises(ValueError, match='^no query images$'):
        searcher.encode([])


def test_the_searcher_is_exported_where_the_readme_says():
    from deephash_zoo import retrieval
    from deephash_zoo.retrieval import search

    assert retrieval.HashSearcher is search.HashSearcher and 'HashSearcher' in retrieval.__all__
