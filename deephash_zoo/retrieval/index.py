"""A FAISS binary index of hash codes, saved as a folder with a manifest that says what it holds.

The manifest records the index kind, code length, item ids and whatever the caller adds (model name,
weights sha256) so a search with codes from another model or code length fails loudly instead of
returning meaningless neighbours.  faiss is optional (extra ``retrieval``) and imported lazily.

An index made by :meth:`HashIndex.from_images` (or loaded with ``encoder=``) keeps the model that encoded
it, so :meth:`~HashIndex.search` and :meth:`~HashIndex.add` take images (a folder, files, PIL images)
as well as codes: two lines from a folder to neighbours::

    index = HashIndex.from_images(model, 'photos/')
    ids, distances = index.search(['query.jpg'], k=10)
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deephash_zoo.extras import require
from deephash_zoo.utils import file_in_the_way, file_sha256, remove_dead_temporaries, replace_dir, temporary_name

from .codes import _to_numpy, as_packed

__all__ = ['HashIndex', 'INDEX_FILE', 'MANIFEST_FILE', 'KINDS', 'check_index_target', 'network_mismatch']

INDEX_FILE = 'index.faiss'
MANIFEST_FILE = 'manifest.json'
KINDS = ('flat', 'hnsw', 'ivf')
_FORMAT = 'deephash-zoo-hash-index'
_FORMAT_VERSION = 1
_RESERVED = frozenset(
    {'format', 'format_version', 'kind', 'bits', 'num_items', 'ids', 'params', 'index_sha256', 'faiss_version'}
)


def _faiss() -> Any:
    """Import faiss on first use so the rest of the package works without it."""
    return require('faiss')


def check_index_target(path: Path, overwrite: bool) -> None:
    """Refuse an index path that ``HashIndex.save`` must not write: one holding something other than an index
    (an empty folder is taken), an index without ``overwrite``, a file where a parent folder goes. Called before
    minutes of encoding too (``deephash-index build``)."""
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            return
        if not (path / MANIFEST_FILE).is_file():
            what = 'a folder of other files, without' if path.is_dir() else 'a file, not an index folder with'
            raise FileExistsError(f'{path} exists and is {what} {MANIFEST_FILE}; refusing to replace it: '
                                  'choose another path')
        if not overwrite:
            raise FileExistsError(f'{path} exists and holds an index; pass overwrite=True to replace it')
        return
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise FileExistsError(f'{path}: a file stands at {blocking}, where a folder would go')


class HashIndex:
    """Hamming-distance nearest-neighbour index over packed hash codes (exact 'flat', 'hnsw' or 'ivf')."""

    def __init__(self, index: Any, kind: str, bits: int, ids: list, manifest: dict[str, Any],
                 encoder: Any = None) -> None:
        self._index = index
        self.kind = kind
        self.bits = bits
        self.ids = ids
        self.manifest = manifest
        self._set_ids(ids)
        self.skipped: list[tuple[str, str]] = []  # (id, why) of image files from_images / add could not open
        self.encoder = None
        self._copies: Any = None  # the encoder's precision copies (folder.PrecisionCopies), made on first use
        if encoder is not None:
            self.attach(encoder)

    def _set_ids(self, ids: list) -> None:
        self.ids = ids
        self._int_ids = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        self._id_array = np.asarray(ids, dtype=np.int64 if self._int_ids else object)

    # ------------------------------------------------------------------------------------------ images
    @classmethod
    def from_images(cls, model: Any, images: Any, *, bits: int | None = None, kind: str = 'flat',
                    batch_size: int = 64, progress: bool = False, device: Any = None, img_size: int | None = None,
                    precision: str = 'auto', manifest_extra: Mapping[str, Any] | None = None,
                    **build_kwargs: Any) -> HashIndex:
        """Encode ``images`` (a folder, searched recursively; image files; PIL images; one image) with ``model`` in
        batches (:func:`deephash_zoo.retrieval.folder.encode_images`) and index the codes; ids are the paths
        relative to the folder. Files that cannot be opened are skipped: ``manifest['skipped']`` counts
        them. The index keeps ``model`` as its encoder, so it can be searched with images."""
        from .folder import PrecisionCopies, encode_images

        copies = PrecisionCopies()
        found = encode_images(model, images, bits=bits, batch_size=batch_size, progress=progress, device=device,
                              img_size=img_size, precision=precision, copies=copies)
        extra = {**found.manifest, 'skipped': len(found.skipped), **dict(manifest_extra or {})}
        index = cls.build(found.codes, found.bits, ids=found.ids, kind=kind, manifest_extra=extra, **build_kwargs)
        index.skipped = found.skipped
        index.attach(model)
        index._copies = copies  # the searches that follow reuse the bf16 copy the encoding made
        return index

    def attach(self, encoder: Any) -> HashIndex:
        """Keep ``encoder`` (the hashing model that made the codes) to encode image queries and additions;
        a model of another network than the manifest's (architecture, and backbone for ``hash_model`` ones), or
        without this index's code length, is refused.

        With ``precision='bf16'`` on a CPU the encoder's bf16 copy is made once and kept: it is made again when
        the encoder's weights change through torch (see :class:`~deephash_zoo.retrieval.folder.PrecisionCopies`);
        after editing them through ``.data``, attach the encoder again."""
        bits = tuple(getattr(encoder, 'bits', ()) or ())
        if self.bits not in bits:
            raise ValueError(f'the encoder has code lengths {bits or "none"}; this index holds {self.bits}-bit codes')
        mismatch = network_mismatch(self.manifest, encoder)
        if mismatch:
            raise ValueError(f'model mismatch: the index was built from {mismatch[0]} codes, the encoder is '
                             f'{mismatch[1]}')
        self.encoder = encoder
        self._copies = None
        return self

    def _encode(self, images: Any, batch_size: int, progress: bool) -> Any:
        from .folder import PrecisionCopies, encode_images

        if self.encoder is None:
            raise ValueError('this index has no encoder for images: build it with HashIndex.from_images, load it '
                             'with HashIndex.load(path, encoder=model), or pass codes')
        self._copies = self._copies or PrecisionCopies()
        return encode_images(self.encoder, images, bits=self.bits, batch_size=batch_size, progress=progress,
                             img_size=self.manifest.get('img_size'), precision=self.manifest.get('precision') or 'fp32',
                             copies=self._copies)

    def add(self, items: Any, ids: Sequence[int | str] | None = None, *, batch_size: int = 64,
            progress: bool = False) -> HashIndex:
        """Add codes, or images (encoded with the index's encoder). Files that cannot be opened are skipped and
        counted in ``manifest['skipped']``; ``ids`` given with images are one per image given, and a skipped
        file's id is dropped with it. Without ids, an image file's id is its path (relative to a folder), a PIL
        image's the next number after the index's (as a string in an index of strings); codes' integer ids
        continue from the largest, and an index of string ids needs string ids for codes. Adding nothing (no
        rows) changes nothing."""
        if isinstance(items, (list, tuple)) and not items:
            items = np.zeros((0, -(-self.bits // 8)), dtype=np.uint8)
        if _is_images(items):
            _check_image_id_count(items, ids)  # before minutes of encoding
            found = self._encode(items, batch_size, progress)
            packed, new_ids = found.codes, self._image_ids(items, found, ids)
        else:
            found, packed, new_ids = None, self._query_codes(items), ids
        if len(packed) == 0:
            _check_ids([] if new_ids is None else new_ids, 0)
            return self
        if new_ids is None:
            if not self._int_ids:
                raise ValueError('this index has string ids: pass ids= for the new items')
            start = self._next_number()
            new_ids = list(range(start, start + len(packed)))
        new_ids = _check_ids(new_ids, len(packed))
        if self.ids and all(isinstance(i, str) for i in new_ids) != (not self._int_ids):
            raise ValueError('new ids must be of the type the index has (all ints or all strings)')
        _check_unique(self.ids + new_ids)
        self._index.add(packed)
        self._set_ids(self.ids + new_ids)
        if found is not None:
            self.skipped += found.skipped
            self.manifest['skipped'] = int(self.manifest.get('skipped', 0)) + len(found.skipped)
        self.manifest.update(ids=self.ids, num_items=len(self.ids))
        self.manifest.pop('index_sha256', None)  # recomputed by save
        return self

    def _image_ids(self, items: Any, found: Any, ids: Sequence[int | str] | None) -> list:
        """Ids of the images that opened: the caller's (one per image given; a skipped file's is dropped), or a
        file's path and a PIL image's next number (PIL images have no name, and their positions '0', '1', ...
        would repeat the ids of the PIL images added before)."""
        given = len(found.ids) + len(found.skipped)
        if ids is not None:
            ids = list(ids)
            if len(ids) != given:
                skipped = f'; {len(found.skipped)} skipped, first {found.skipped[0][1]}' if found.skipped else ''
                raise ValueError(f'got {len(ids)} ids for {given} images; expected one id per image given, skipped '
                                 f'ones included (their ids are dropped with them){skipped}')
            return [ids[p] for p in found.positions]
        from PIL import Image

        listed = [items] if isinstance(items, Image.Image) else items if isinstance(items, (list, tuple)) else None
        if listed is None:
            return found.ids
        start = self._next_number()
        return [(start + p if self._int_ids else str(start + p)) if isinstance(listed[p], Image.Image) else name
                for p, name in zip(found.positions, found.ids, strict=True)]

    def _next_number(self) -> int:
        """One past the largest numeric id (ints, or strings of digits in an index of strings); 0 for none."""
        numbers = [i if self._int_ids else int(i) for i in self.ids if self._int_ids or str(i).isdigit()]
        return max(numbers, default=-1) + 1

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        packed_codes: Any,
        bits: int,
        ids: Sequence[int | str] | None = None,
        kind: str = 'flat',
        manifest_extra: Mapping[str, Any] | None = None,
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 8,
    ) -> HashIndex:
        """Build an index over ``(n, ceil(bits/8))`` packed (or ``(n, bits)`` sign) codes.

        ``ids`` (default ``0..n-1``) are what searches return; ints or strings, stored in the manifest.
        ``manifest_extra`` (e.g. ``{'model': ..., 'weights_sha256': ...}``) is stored at the manifest's
        top level.  ``ivf`` trains its coarse quantiser on the codes themselves (``nlist`` defaults to
        about sqrt(n)).
        """
        if kind not in KINDS:
            raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
        _check_tuning(hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist, nprobe=nprobe)
        packed, bits = as_packed(packed_codes, bits)
        n = packed.shape[0]
        if n == 0:
            raise ValueError('cannot build an index over 0 codes; expected at least one')
        ids = list(range(n)) if ids is None else _check_ids(ids, n)
        extra = dict(manifest_extra or {})
        clash = sorted(_RESERVED & extra.keys())
        if clash:
            raise ValueError(f'manifest_extra uses reserved keys {clash}')
        _check_json(extra)
        faiss = _faiss()
        d = 8 * packed.shape[1]  # FAISS needs whole bytes; zero padding bits do not change distances
        params: dict[str, Any] = {}
        if kind == 'flat':
            index = faiss.IndexBinaryFlat(d)
        elif kind == 'hnsw':
            index = faiss.IndexBinaryHNSW(d, int(hnsw_m))
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
            params = {'m': int(hnsw_m), 'ef_construction': int(ef_construction), 'ef_search': int(ef_search)}
        else:
            nlist = max(1, min(n, round(n**0.5))) if nlist is None else int(nlist)
            if not 1 <= nlist <= n:
                raise ValueError(f'nlist must be between 1 and the number of codes ({n}), got {nlist}')
            quantizer = faiss.IndexBinaryFlat(d)
            index = faiss.IndexBinaryIVF(quantizer, d, nlist)
            index.own_fields = True
            quantizer.this.disown()  # the IVF index frees it
            index.train(packed)
            index.nprobe = int(nprobe)
            params = {'nlist': nlist, 'nprobe': int(nprobe)}
        index.add(packed)
        manifest = {
            'format': _FORMAT,
            'format_version': _FORMAT_VERSION,
            'kind': kind,
            'bits': bits,
            'num_items': n,
            'params': params,
            'faiss_version': getattr(faiss, '__version__', 'unknown'),
            **extra,
            'ids': ids,
        }
        return cls(index, kind, bits, ids, manifest)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f'HashIndex(kind={self.kind!r}, bits={self.bits}, items={len(self)})'

    # ----------------------------------------------------------------------------------------- tuning
    @property
    def nprobe(self) -> int:
        """IVF lists visited per query (more: slower, higher recall)."""
        self._require('ivf', 'nprobe')
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._require('ivf', 'nprobe')
        if int(value) < 1:
            raise ValueError(f'nprobe must be >= 1, got {value}')
        self._index.nprobe = int(value)
        self.manifest['params']['nprobe'] = int(value)

    @property
    def ef_search(self) -> int:
        """HNSW candidate-list size per query (more: slower, higher recall)."""
        self._require('hnsw', 'ef_search')
        return int(self._index.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._require('hnsw', 'ef_search')
        if int(value) < 1:
            raise ValueError(f'ef_search must be >= 1, got {value}')
        self._index.hnsw.efSearch = int(value)
        self.manifest['params']['ef_search'] = int(value)

    def _require(self, kind: str, what: str) -> None:
        if self.kind != kind:
            raise AttributeError(f'{what} applies to {kind!r} indexes, this one is {self.kind!r}')

    # ---------------------------------------------------------------------------------------- search
    def search(self, codes: Any, k: int, *, model: str | None = None, batch_size: int = 64,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items per query: ``(ids, distances)``, each ``(nq, k)``, nearest first.

        ``codes``: packed or sign codes, or images (a folder, image files, PIL images, one image file or PIL
        image) that the index's encoder turns into codes (a file that cannot be opened is an error here: a
        query is not skipped).
        ``model``, when given, must equal the manifest's ``model`` (codes of another model are
        meaningless here).  ``k`` above the index size is clipped.  Slots an approximate index cannot
        fill hold id -1 (None for string ids) and distance -1.
        """
        if model is not None and self.manifest.get('model') != model:
            recorded = self.manifest.get('model')
            raise ValueError(
                f'model mismatch: the index was built from {recorded!r} codes but the query is for {model!r}'
                if recorded is not None
                else f'model mismatch: the index manifest records no model, but the query is for {model!r}'
            )
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f'k must be a positive integer, got {k!r}')
        if isinstance(codes, (list, tuple)) and not codes:
            raise ValueError('no queries: pass codes or images to search with')
        if _is_images(codes):
            found = self._encode(codes, batch_size, progress)
            if found.skipped:
                raise ValueError(f'query image {found.skipped[0][1]}')  # the reason names the file
            packed = found.codes
        else:
            packed = self._query_codes(codes)
        k = min(int(k), len(self))
        dist, pos = self._index.search(packed, k)
        missing = pos < 0
        ids = self._id_array[np.where(missing, 0, pos)]
        if missing.any():
            ids = ids.astype(object) if not self._int_ids else ids
            ids[missing] = -1 if self._int_ids else None
            dist = np.where(missing, -1, dist)
        return ids, dist.astype(np.int32, copy=False)

    def _query_codes(self, codes: Any) -> np.ndarray:
        arr = _to_numpy(codes, 'query codes')
        if arr.ndim == 1:
            arr = arr[None, :]
        nbytes = -(-self.bits // 8)
        if arr.ndim == 2 and arr.dtype == np.uint8 and arr.shape[1] == nbytes:
            packed, _ = as_packed(arr, self.bits)
        else:
            packed, bits = as_packed(arr)
            if bits != self.bits:
                raise ValueError(f'query codes have {bits} bits but the index holds {self.bits}-bit codes')
        return packed

    # ----------------------------------------------------------------------------------------- save/load
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``index.faiss`` + ``manifest.json`` into folder ``path`` atomically.

        Files go to a temporary sibling folder that is renamed into place only when complete, so a
        crash or error never leaves a half-written index at ``path``.  With ``overwrite`` an existing
        index folder (one with a manifest) is replaced; any other existing path is refused.
        """
        faiss = _faiss()
        path = Path(path)
        check_index_target(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temporaries(path.parent, f'.{path.name}.tmp-')  # what a killed save left
        tmp = path.parent / temporary_name(f'.{path.name}.tmp-')
        try:
            tmp.mkdir()
            faiss.write_index_binary(self._index, str(tmp / INDEX_FILE))
            manifest = {**self.manifest, 'index_sha256': file_sha256(tmp / INDEX_FILE)}
            with open(tmp / MANIFEST_FILE, 'w', encoding='utf-8') as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, encoder: Any = None) -> HashIndex:
        """Load a folder written by :meth:`save`, checking the manifest and the index file's checksum;
        ``encoder``: the model that made the codes, to search with images (see :meth:`attach`)."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f'no index folder at {path}')
        mpath, ipath = path / MANIFEST_FILE, path / INDEX_FILE
        for p in (mpath, ipath):
            if not p.is_file():
                raise FileNotFoundError(f'{path} is not a complete index folder: {p.name} is missing')
        try:
            manifest = json.loads(mpath.read_text(encoding='utf-8'))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f'corrupt index manifest {mpath}: not valid JSON ({e})') from None
        kind, bits, ids = _check_manifest(manifest, mpath)
        want = manifest.get('index_sha256')
        if want is not None and file_sha256(ipath) != want:
            raise ValueError(f'corrupt index: {ipath} does not match the sha256 recorded in the manifest')
        faiss = _faiss()
        try:
            index = faiss.read_index_binary(str(ipath))
        except RuntimeError as e:
            raise ValueError(f'corrupt index file {ipath}: {str(e).splitlines()[0] if str(e) else e}') from None
        if index.ntotal != len(ids) or index.d != 8 * (-(-bits // 8)):
            raise ValueError(
                f'corrupt index: {ipath} holds {index.ntotal} codes of {index.d} bits, '
                f'the manifest says {len(ids)} codes of {bits} bits'
            )
        return cls(index, kind, bits, ids, manifest, encoder=encoder)


def _is_images(items: Any) -> bool:
    """Images (a path, PIL image, or a list of them) rather than codes (arrays, tensors, lists of numbers)."""
    from PIL import Image

    if isinstance(items, (str, os.PathLike, Image.Image)):
        return True
    if isinstance(items, (list, tuple)) and items:
        return isinstance(items[0], (str, os.PathLike, Image.Image))
    return False


def network_mismatch(manifest: Mapping[str, Any], model: Any) -> tuple[str, str] | None:
    """``(recorded, given)`` descriptions of the networks when ``model`` is not the one whose codes ``manifest``
    describes, else None: the architecture, and for a ``hash_model`` its backbone (every one is architecture
    ``hash_backbone``). What a manifest does not record (an index saved before backbones were) is not checked."""
    from .folder import model_identity

    given = model_identity(model)
    differ = any(manifest.get(key) and given.get(key) and manifest.get(key) != given.get(key)
                 for key in ('model', 'backbone'))
    return (_network(manifest), _network(given)) if differ else None


def _network(identity: Mapping[str, Any]) -> str:
    """A network as a message names it: the architecture, and the backbone where one is recorded."""
    backbone = identity.get('backbone')
    return f"{identity.get('model')!r}" + (f' (backbone {backbone!r})' if backbone else '')


def _check_image_id_count(images: Any, ids: Sequence[int | str] | None) -> None:
    """Refuse ids that cannot be one per image given, where the images are counted without listing a folder."""
    from PIL import Image

    given = 1 if isinstance(images, Image.Image) else len(images) if isinstance(images, (list, tuple)) else None
    if ids is not None and given is not None and len(ids) != given:
        raise ValueError(f'got {len(ids)} ids for {given} images; expected one id per image given')


def _check_json(extra: Mapping[Any, Any]) -> None:
    """Refuse what the JSON manifest cannot hold (numpy numbers, tuples as keys, ...) at build, not at save."""
    for key, value in extra.items():
        if not isinstance(key, str):
            raise ValueError(f'manifest_extra keys must be strings (the manifest is JSON), got {key!r}')
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f'manifest_extra[{key!r}] cannot be stored in the JSON manifest: {e}') from None


def _check_ids(ids: Sequence[int | str], n: int) -> list:
    ids = [int(i) if isinstance(i, np.integer) else i for i in ids]
    if len(ids) != n:
        raise ValueError(f'got {len(ids)} ids for {n} codes; expected one id per code')
    if not all(isinstance(i, str) or (isinstance(i, int) and not isinstance(i, bool)) for i in ids):
        raise ValueError('ids must be ints or strings (they are stored in the JSON manifest)')
    if ids and len({type(i) for i in ids}) > 1:
        raise ValueError('ids must be all ints or all strings, not a mix')
    _check_unique(ids)
    return ids


def _check_unique(ids: Sequence[int | str]) -> None:
    """Refuse a repeated id: a search answers ids, and one id for two items names neither (a searcher mapping ids
    back to rows gave one row for all of them)."""
    seen: set = set()
    for i in ids:
        if i in seen:
            raise ValueError(f'id {i!r} is given twice; every item needs its own id')
        seen.add(i)


def _check_tuning(**values: int | None) -> None:
    """Refuse a FAISS tuning value below its minimum (HNSW's M: 2, the others: 1) before FAISS sees it: HNSW with
    M = 0 aborts the process in a C++ assertion, ef_search below 1 returns -1 ids, nprobe 0 fails at the first
    search."""
    for name, value in values.items():
        least = 2 if name == 'hnsw_m' else 1  # an HNSW node needs a neighbour
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least):
            raise ValueError(f'{name} must be an integer >= {least}, got {value!r}')


def _check_manifest(m: Any, mpath: Path) -> tuple[str, int, list]:
    def bad(why: str) -> ValueError:
        return ValueError(f'corrupt index manifest {mpath}: {why}')

    if not isinstance(m, dict):
        raise bad('expected a JSON object')
    if m.get('format') != _FORMAT:
        raise bad(f'format is {m.get("format")!r}, expected {_FORMAT!r}')
    if m.get('format_version') != _FORMAT_VERSION:
        raise bad(f'format_version {m.get("format_version")!r} is not supported (expected {_FORMAT_VERSION})')
    kind, bits, n, ids = m.get('kind'), m.get('bits'), m.get('num_items'), m.get('ids')
    if kind not in KINDS:
        raise bad(f'kind {kind!r} is not one of {KINDS}')
    if not isinstance(bits, int) or bits < 1:
        raise bad(f'bits {bits!r} is not a positive integer')
    if not isinstance(ids, list) or not isinstance(n, int) or len(ids) != n:
        raise bad('ids must be a list with num_items entries')
    if not isinstance(m.get('params', {}), dict):
        raise bad('params must be an object')
    return kind, bits, ids
