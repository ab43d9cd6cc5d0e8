"""``deephash-index``: build a FAISS Hamming index of a benchmark's database, and query it with image files.

``build`` encodes the protocol's database set with a checkpoint and saves a :class:`HashIndex` folder whose
manifest records what made the codes: ``model`` (architecture), ``model_bits`` (all its code lengths),
``weights_sha256``, ``checkpoint`` (absolute path), ``dataset``, ``protocol``, ``img_size`` and
``package_version``; the index's own ``bits`` is the code length indexed. ``query`` encodes image files with
the checkpoint the manifest names (or ``--checkpoint``) and refuses one whose architecture, code lengths or
weights differ from the index's: codes of another model are meaningless neighbours. ``query --grid PNG``
also draws each image with its neighbours (:mod:`deephash_zoo.retrieval.grid`), the database images rebuilt
from the manifest's data set and protocol (a ``build --images`` index: opened from its folder by id); an
image file carries no label, so the frames are grey (relevance unknown) and the captions give each
neighbour's label (its id for a folder).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from PIL import Image

import deephash_zoo
from deephash_zoo.data.images import open_rgb
from deephash_zoo.evaluation import checkpoint_summary, data_defaults, load_for_retrieval, protocol_sets, resolve_device
from deephash_zoo.utils import file_in_the_way

from ._common import UserError, print_skipped, run_main

if TYPE_CHECKING:
    from deephash_zoo.retrieval.index import HashIndex
    from deephash_zoo.retrieval.search import HashSearcher, SearchResult

__all__ = ['index_sets', 'open_searcher', 'main', 'cli']


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-index', description=(__doc__ or '').split('\n', 1)[0])
    sub = p.add_subparsers(dest='command', required=True)
    b = sub.add_parser('build', help="encode a benchmark's database set into an index folder")
    b.add_argument('--checkpoint', required=True,
                   help='checkpoint folder, a run folder holding checkpoint/, local-dir:FOLDER or hf-hub:ORG/NAME')
    b.add_argument('--data', default=None,
                   help="fashion-mnist | mosaic[-pair|-quadrant|-single] | cifar10[-1|-2]:DIR | list:PATH | coco:PATH "
                        "| folder:DIR (your own images, one subfolder per class; split by the 'own' protocol) "
                        "(default: the checkpoint's dataset)")
    b.add_argument('--data-root', default=None, help='image root (list:/coco:) or Fashion-MNIST folder')
    b.add_argument('--images', type=Path, default=None, metavar='DIR',
                   help='index your own folder of images instead (recursive; ids = paths relative to DIR; '
                        'unreadable files skipped and counted)')
    b.add_argument('--kind', choices=('flat', 'hnsw', 'ivf'), default='flat', help='flat is exact (default)')
    b.add_argument('--bits', type=int, default=None, help='code length to index (default: the longest)')
    b.add_argument('--db-subset', type=int, default=None, help='index a seeded subset of this many items')
    b.add_argument('--seed', type=int, default=None, help="protocol seed (default: the checkpoint's training seed)")
    b.add_argument('--img-size', type=int, default=None, help="input size (default: the checkpoint's training size)")
    b.add_argument('--batch-size', type=int, default=64)
    b.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    b.add_argument('--out', type=Path, required=True, help='index folder to write (index.faiss + manifest.json)')
    b.add_argument('--overwrite', action='store_true', help='replace an existing index folder at --out')
    b.add_argument('--no-progress', action='store_true', help='no progress bar')
    q = sub.add_parser('query', help='nearest database items of image files')
    q.add_argument('--index', type=Path, required=True, help='index folder written by build')
    q.add_argument('--image', type=Path, nargs='+', required=True, help='query image file(s)')
    q.add_argument('-k', '--topk', dest='k', type=int, default=10, help='neighbours per image (default: %(default)s)')
    q.add_argument('--checkpoint', default=None, help="checkpoint to encode with (default: the manifest's)")
    q.add_argument('--unverified-index', action='store_true',
                   help='query an index whose manifest names no model or weights digest (a warning says so)')
    q.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    q.add_argument('--json', action='store_true', help='print the results as JSON')
    q.add_argument('--grid', type=Path, default=None, metavar='PNG',
                   help='also write the images and their neighbours as a grid PNG')
    return p


# -------------------------------------------------------------------------------------------------- build
def build(args: argparse.Namespace) -> int:
    from deephash_zoo.extras import check_installed
    from deephash_zoo.retrieval.encoding import encode_dataset, model_transform
    from deephash_zoo.retrieval.index import check_index_target

    check_installed('faiss')  # before encoding the whole database
    try:
        check_index_target(args.out, args.overwrite)
    except FileExistsError as e:
        raise UserError(str(e).replace('pass overwrite=True', 'pass --overwrite')) from None
    ckpt = load_for_retrieval(args.checkpoint, resolve_device(args.device))
    bits = max(ckpt.bits) if args.bits is None else args.bits
    if bits not in ckpt.bits:
        raise UserError(f'{ckpt.architecture} has code lengths {ckpt.bits}; got --bits {bits}')
    img_size = ckpt.img_size if args.img_size is None else args.img_size  # 0 is refused, not the default
    if args.images is not None:
        return _build_from_folder(args, ckpt, bits, img_size)
    transform = model_transform(ckpt.model, img_size)
    data, root, seed = data_defaults(ckpt, args.data, args.data_root, args.seed)
    sets, protocol = protocol_sets(data, root, seed, transform, db_subset=args.db_subset, which=('database',))
    database = sets['database']
    codes = encode_dataset(ckpt.model, database, args.batch_size, next(ckpt.model.parameters()).device, bits,
                           progress=not args.no_progress)
    ids = database.ids if database.ids is not None else list(range(len(database)))
    extra = dict(model=ckpt.architecture, model_bits=list(ckpt.bits), weights_sha256=ckpt.weights_sha256,
                 checkpoint=str(ckpt.path), dataset=data, data_root=root, protocol=protocol, img_size=img_size,
                 package_version=deephash_zoo.__version__)
    index = _save_index(args, codes, bits, ids, extra)
    print(f'{len(index):,} {data} database items, {bits}-bit codes of {ckpt.architecture} '
          f'({args.kind} index) -> {args.out}')
    return 0


def _save_index(args: argparse.Namespace, codes: Any, bits: int, ids: Any, extra: Dict[str, Any]) -> Any:
    """The ``--kind`` index of ``codes`` with its manifest, saved at ``--out`` (``--overwrite`` replaces one)."""
    from deephash_zoo.retrieval.index import HashIndex

    index = HashIndex.build(codes, bits, ids=ids, kind=args.kind, manifest_extra=extra)
    try:
        index.save(args.out, overwrite=args.overwrite)
    except FileExistsError as e:
        raise UserError(str(e).replace('pass overwrite=True', 'pass --overwrite')) from None
    return index


def _build_from_folder(args: argparse.Namespace, ckpt: Any, bits: int, img_size: int) -> int:
    """``--images DIR``: an index of a folder's images, encoded in batches (bounded memory)."""
    from deephash_zoo.retrieval.folder import encode_images

    if args.data is not None:
        raise UserError('--images indexes a folder; --data names a benchmark: give one of them')
    found = encode_images(ckpt.model, args.images, bits=bits, batch_size=args.batch_size,
                          progress=not args.no_progress, img_size=img_size)  # the size queries are encoded at
    print_skipped(found.skipped)
    extra = dict(found.manifest, model=ckpt.architecture, weights_sha256=ckpt.weights_sha256,
                 checkpoint=str(ckpt.path), images_root=str(args.images.resolve()), img_size=img_size,
                 skipped=len(found.skipped), package_version=deephash_zoo.__version__)
    index = _save_index(args, found.codes, bits, found.ids, extra)
    print(f'{len(index):,} images of {args.images} ({len(found.skipped)} skipped), {bits}-bit codes of '
          f'{ckpt.architecture} ({args.kind} index) -> {args.out}')
    return 0


# -------------------------------------------------------------------------------------------------- query
def _open_images(paths: List[Path]) -> List[Image.Image]:
    return [open_rgb(path) for path in paths]  # ImageRejected: one line naming the file


def _check_checkpoint_fits(manifest: Dict[str, Any], path: str, index_bits: int, unverified: bool = False) -> None:
    """Refuse a checkpoint whose codes cannot be compared with the index's, before loading its weights; an
    index whose manifest cannot say (no model or weights digest) only with ``unverified``, which is said."""
    from deephash_zoo.hub.checkpoint import weights_sha256

    unknown = [k for k in ('model', 'weights_sha256') if not manifest.get(k)]
    if unknown and not unverified:
        raise UserError(f'the index manifest records no {" and no ".join(unknown)}, so nothing shows which weights '
                        'made its codes; rebuild it with deephash-index build, or pass --unverified-index to '
                        'query it anyway')
    if unknown:
        print(f'warning: the index manifest records no {" and no ".join(unknown)} (--unverified-index): '
              'its codes may come from other weights than the checkpoint\'s', file=sys.stderr)
    ckpt, config = checkpoint_summary(path)
    arch, bits = config['architecture'], tuple(config['bits'])
    if manifest.get('model') is not None and arch != manifest['model']:
        raise UserError(f"model mismatch: the index holds codes of {manifest['model']!r}, "
                        f'the checkpoint {ckpt} is {arch!r}')
    if index_bits not in bits:
        raise UserError(f'code length mismatch: the index holds {index_bits}-bit codes, '
                        f'the checkpoint {ckpt} has code lengths {bits}')
    want, weights = manifest.get('weights_sha256'), ckpt / 'model.safetensors'
    if want is not None and weights.is_file() and weights_sha256(weights) != want:
        _check_readable(weights)  # a truncated copy of the right file differs too: name that, not a mismatch
        raise UserError(f'weights mismatch: the checkpoint {ckpt} is not the one the index was built with '
                        f'(weights sha256 differs); rebuild the index or pass the original --checkpoint')


def _check_readable(weights: Path) -> None:
    """Refuse a safetensors file whose header or data is cut short or garbled (the one-line message
    ``load_checkpoint`` gives for it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), 'pt'):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f'{weights}: corrupt or truncated safetensors file ({e})') from None


def open_searcher(index: HashIndex | Path, checkpoint: Optional[str] = None, device: str = 'auto',
                  unverified: bool = False) -> HashSearcher:
    """An index (or index folder) with the checkpoint that made it (or ``checkpoint``, checked to fit first;
    ``unverified`` accepts an index whose manifest names no model or weights digest)."""
    from deephash_zoo.retrieval.encoding import model_transform
    from deephash_zoo.retrieval.index import HashIndex
    from deephash_zoo.retrieval.search import HashSearcher

    if not isinstance(index, HashIndex):
        index = HashIndex.load(index)
    manifest = index.manifest
    path = checkpoint or manifest.get('checkpoint')
    if path is None:
        raise UserError('the index manifest names no checkpoint; pass --checkpoint')
    if checkpoint is None and not str(path).startswith(('hf-hub:', 'local-dir:')) and not Path(path).exists():
        raise UserError(f'the index was built with the checkpoint {path}, which is not there any more (moved or '
                        'deleted?); pass --checkpoint with the same weights (their sha256 is checked)')
    _check_checkpoint_fits(manifest, path, index.bits, unverified)
    ckpt = load_for_retrieval(path, resolve_device(device))
    return HashSearcher(ckpt.model, index, model_transform(ckpt.model, manifest.get('img_size') or ckpt.img_size))


def index_sets(manifest: Dict[str, Any], which: Sequence[str] = ('database',)) -> Dict[str, Any]:
    """The protocol sets an index was built from (the database, in index order; the queries on request),
    rebuilt from its manifest: for showing images, not encoding them (no transform)."""
    data, proto = manifest.get('dataset'), manifest.get('protocol') or {}
    if manifest.get('images_root'):
        raise UserError(f"this index holds a folder of images ({manifest['images_root']}), not a benchmark's "
                        'data set; there is no protocol to rebuild')
    if not data or 'seed' not in proto:
        raise UserError('the index manifest does not record its data set and protocol; rebuild the index')
    root = manifest.get('data_root')
    if 'data_root' not in manifest:  # indexes built before data_root was recorded: the checkpoint's training root
        try:
            root = (checkpoint_summary(manifest['checkpoint'])[1].get('training') or {}).get('data_root')
        except (KeyError, FileNotFoundError, ValueError):
            root = None
    try:
        sets, _ = protocol_sets(data, root, int(proto['seed']), None, db_subset=proto.get('db_subset'), which=which)
    except (FileNotFoundError, ValueError, UserError) as e:
        raise UserError(f"cannot rebuild the index's {data} database to show its images: {e}") from None
    ids = sets['database'].ids or list(range(len(sets['database'])))
    if ids != manifest.get('ids'):
        raise UserError(f"the {data} database rebuilt from the manifest does not hold the index's items "
                        '(different data files?); cannot show its images')
    return sets


def query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise UserError(f'-k must be a positive integer, got {args.k}')
    from deephash_zoo.retrieval.index import HashIndex

    index = HashIndex.load(args.index)  # a missing index is reported before an unreadable image
    if args.grid is not None and file_in_the_way(args.grid) is not None:  # before the search, not after (errno 17)
        raise UserError(f'--grid {args.grid}: a file stands at {file_in_the_way(args.grid)}, where a folder would go')
    images = _open_images(args.image)
    searcher = open_searcher(index, args.checkpoint, args.device, args.unverified_index)
    manifest = index.manifest
    found = searcher.search(images, args.k)
    results = [dict(image=str(p), ids=row_ids, distances=[int(d) for d in row_d])
               for p, row_ids, row_d in zip(args.image, found.ids, found.distances, strict=True)]
    if args.grid is not None:
        _write_grid(args.grid, images, found, manifest, [p.name for p in args.image])
    if args.json:
        print(json.dumps(dict(index=str(args.index), model=manifest.get('model'), bits=index.bits,
                              kind=index.kind, results=results), indent=2))
        return 0
    print(f"{len(index):,} items, {index.bits}-bit codes of {manifest.get('model')} ({index.kind} index)")
    for r in results:
        print(f"{r['image']}:\n  rank  dist  id")
        for rank, (item, d) in enumerate(zip(r['ids'], r['distances'], strict=True), 1):
            print(f'  {rank:>4}  {d:>4}  {item}')
    if args.grid is not None:
        print(f'wrote {args.grid}')
    return 0


def _write_grid(path: Path, images: List[Image.Image], found: SearchResult, manifest: Dict[str, Any], names: List[str]
                ) -> None:
    """The query images and their neighbours as a grid PNG; grey frames: an image file has no label."""
    from deephash_zoo.retrieval import grid
    from deephash_zoo.utils import write_atomic

    if manifest.get('images_root'):  # a folder index: its neighbours are those files, captioned with their ids
        rows = _folder_rows(Path(manifest['images_root']), images, found)
        what = f"images of {manifest['images_root']}"
    else:
        database = index_sets(manifest)['database']
        rows = grid.ranked_rows(images, None, database, found.positions, found.distances)
        what = f"{manifest.get('dataset')} items"
    rows = [[grid.GridCell(row[0].image, name, query=True), *row[1:]] for row, name in zip(rows, names, strict=True)]
    title = (f"{manifest.get('model')}, {manifest['bits']}-bit codes: nearest of {manifest['num_items']:,} "
             f"{what} (grey frames: the query's label is unknown)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, grid.grid_png(rows, title))


def _folder_rows(root: Path, images: List[Image.Image], found: SearchResult) -> List[List[Any]]:
    """Grid rows of a ``build --images`` index: each neighbour opened from the folder by its id (its path
    relative to the folder), unfilled slots of an approximate index left out."""
    from deephash_zoo.retrieval import grid

    if not root.is_dir():
        raise UserError(f'--grid opens the indexed images, but their folder {root} is gone; move it back or '
                        'query without --grid')

    def cell(item: Any, distance: int) -> Any:
        if Path(str(item)).is_absolute() or '..' in Path(str(item)).parts:  # a manifest edited to point outside
            raise UserError(f'the index manifest names {item!r}, which is not a path inside {root}')
        return grid.GridCell(open_rgb(root / str(item)), str(item), int(distance))

    return [[grid.GridCell(image, query=True),
             *(cell(item, d) for item, pos, d in zip(ids, positions, dists, strict=True) if pos >= 0)]
            for image, ids, positions, dists in zip(images, found.ids, found.positions, found.distances, strict=True)]


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return build(args) if args.command == 'build' else query(args)


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
