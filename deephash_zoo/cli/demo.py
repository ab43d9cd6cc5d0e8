"""``deephash-demo``: a search page over a hash index (Gradio), served on localhost by default.

With ``--index`` it serves that index (built by ``deephash-index build``) with the checkpoint its manifest
names. Without, it builds the embedded default: a Fashion-MNIST index of ``--db-subset`` training images
from ``--checkpoint``, or else from the newest Fashion-MNIST checkpoint under ``--runs`` (``RUN/checkpoint``
folders, as ``deephash-train --out RUN`` writes them), kept in ``RUN/demo-index`` and rebuilt when the
weights change; with no checkpoint at all it names the command to run first. ``--screenshot PNG`` serves
the page on a free localhost port, has headless Chromium render it once it shows an answer, writes the PNG
and exits (how the README's screenshot is made).
"""
import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

from ._common import UserError, run_main

__all__ = ['bind_address', 'newest_checkpoint', 'main', 'cli']

# the README's two stages: the paper's recipe from random weights collapses the codes, so a trunk comes first
PRETRAIN_FIRST = ('deephash-pretrain --trunk alexnet --data fashion-mnist --img-size 64 --subset 10000 --epochs 4 '
                  '--out runs/pre-alexnet')
TRAIN_FIRST = ('deephash-train --model dath_alexnet_32 --recipe scratch --init runs/pre-alexnet/trunk.safetensors '
               '--data fashion-mnist --img-size 64 --subset 10000 --epochs 2 --out runs/dath32')
DEFAULT_INDEX = 'demo-index'


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WIDTHxHEIGHT, e.g. 1280x1000, got {text!r}') from None
    if w < 200 or h < 200:
        raise argparse.ArgumentTypeError(f'a screenshot needs at least 200x200 pixels, got {text!r}')
    return w, h


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='deephash-demo', description=(__doc__ or '').split('\n', 1)[0])
    p.add_argument('--index', type=Path, default=None, help='index folder (default: build the Fashion-MNIST one)')
    p.add_argument('--checkpoint', default=None,
                   help="checkpoint to encode with (default: the index's); without --index, the checkpoint to "
                        'build the default index from (default: the newest under --runs)')
    p.add_argument('--runs', type=Path, default=Path('runs'), help='where to look for checkpoints (default: runs)')
    p.add_argument('--db-subset', type=int, default=5000,
                   help='Fashion-MNIST training images in the default index (default: %(default)s)')
    p.add_argument('--host', default=None,
                   help='address to bind (default: $GRADIO_SERVER_NAME as on Spaces, else 127.0.0.1: this machine)')
    p.add_argument('--port', type=int, default=None, help='port (default: $GRADIO_SERVER_PORT, else 7860)')
    p.add_argument('-k', '--topk', dest='k', type=int, default=10, help='neighbours shown (default: %(default)s)')
    p.add_argument('--examples', type=int, default=9,
                   help='example queries offered, from the protocol\'s query set (default: %(default)s)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--screenshot', type=Path, default=None, metavar='PNG',
                   help='render the page in headless Chromium, write this PNG and exit')
    p.add_argument('--screenshot-size', type=_size, default=(1280, 1000), metavar='WxH')
    p.add_argument('--example', type=int, default=0, help='example the screenshot shows (default: 0)')
    return p


# ------------------------------------------------------------------------------------------ default index
def newest_checkpoint(runs: Path, dataset: str = 'fashion-mnist') -> Optional[Path]:
    """The most recently written checkpoint folder trained on ``dataset`` under ``runs`` (or None)."""
    from deephash_zoo.hub.checkpoint import read_checkpoint_config

    found = []
    for config in [*runs.glob('*/checkpoint/config.json'), *runs.glob('*/config.json')]:
        weights = config.parent / 'model.safetensors'
        try:
            if weights.is_file() and read_checkpoint_config(config.parent).get('dataset') == dataset:
                found.append((weights.stat().st_mtime, str(config.parent)))
        except (OSError, ValueError, KeyError):
            continue  # half-written or foreign folders are not candidates
    return Path(max(found)[1]) if found else None


def default_index(args: argparse.Namespace) -> Path:
    """The Fashion-MNIST index of the given or newest checkpoint, built (or rebuilt) when missing or stale."""
    from deephash_zoo.evaluation import checkpoint_summary
    from deephash_zoo.hub.checkpoint import run_folder, weights_sha256
    from deephash_zoo.retrieval.index import MANIFEST_FILE, HashIndex

    from .index import main as index_main

    if args.checkpoint is None:
        found = newest_checkpoint(args.runs)
        if found is None:
            raise UserError(f'no --index given and no Fashion-MNIST checkpoint under {args.runs}/; train one '
                            f'first: `{PRETRAIN_FIRST}`, then `{TRAIN_FIRST}` (or pass --index / --checkpoint)')
        args.checkpoint = str(found)
    ckpt, _ = checkpoint_summary(args.checkpoint)
    out = run_folder(ckpt) / DEFAULT_INDEX
    if (out / MANIFEST_FILE).is_file():
        try:
            m = HashIndex.load(out).manifest
            fresh = (m.get('weights_sha256') == weights_sha256(ckpt / 'model.safetensors')
                     and m.get('dataset') == 'fashion-mnist'
                     and (m.get('protocol') or {}).get('db_subset') == args.db_subset)
        except (OSError, ValueError):
            fresh = False
        if fresh:
            print(f'index: {out} (Fashion-MNIST, {m["num_items"]:,} items, from {ckpt})')
            return out
    print(f'building the default index: {args.db_subset:,} Fashion-MNIST training images encoded with {ckpt}')
    code = index_main(['build', '--checkpoint', str(ckpt), '--data', 'fashion-mnist', '--db-subset',
                       str(args.db_subset), '--out', str(out), '--overwrite', '--device', args.device])
    if code:
        raise UserError(f'could not build the default index at {out}')
    return out


# ----------------------------------------------------------------------------------------------- serving
def bind_address(host: Optional[str], port: Optional[int]) -> Tuple[str, int]:
    """Where to serve: the flags, else Gradio's variables (a Space sets them), else 127.0.0.1:7860."""
    host = host or os.environ.get('GRADIO_SERVER_NAME') or '127.0.0.1'
    if port is None:
        raw = os.environ.get('GRADIO_SERVER_PORT') or '7860'
        if not raw.isdigit():
            raise UserError(f'GRADIO_SERVER_PORT must be a port number, got {raw!r}')
        port = int(raw)
    return host, port


def load_demo_data(args: argparse.Namespace) -> Any:
    """Index, checkpoint, database images and example queries, checked before anything is served."""
    from deephash_zoo.demo.app import DemoData, Example
    from deephash_zoo.retrieval.grid import label_text, pick_queries
    from deephash_zoo.retrieval.index import HashIndex

    from .index import index_sets, open_searcher

    if args.k < 1 or args.examples < 0:
        raise UserError(f'-k must be positive and --examples 0 or more, got -k {args.k} --examples {args.examples}')
    index_dir = args.index if args.index is not None else default_index(args)
    index = HashIndex.load(index_dir)
    folder = index.manifest.get('images_root')
    if folder:  # the page's examples and neighbour labels come from a benchmark's protocol, which a folder lacks
        raise UserError(f'deephash-demo serves benchmark indexes (examples and labels from the data set); '
                        f'{index_dir} holds a folder of images ({folder}): search it with `deephash-index query '
                        f'--index {index_dir} --image FILE --grid PNG`')
    searcher = open_searcher(index, args.checkpoint, args.device)
    sets = index_sets(searcher.index.manifest, which=('query', 'database'))
    query = sets['query']
    picks = pick_queries(query.labels, args.examples, seed=int(searcher.index.manifest['protocol']['seed']))
    examples = [Example(query.load_image(int(i)), label_text(query.labels[i], query.class_names), query.labels[i])
                for i in picks]
    searcher.search([examples[0].image if examples else query.load_image(0)], 1)  # warm-up: steady timings
    return DemoData(searcher=searcher, database=sets['database'], examples=examples, k=args.k)


def free_port(host: str = '127.0.0.1') -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def take_screenshot(data: Any, args: argparse.Namespace) -> int:
    from deephash_zoo.demo.app import build_demo, launch
    from deephash_zoo.demo.browser import find_chromium, screenshot

    if find_chromium() is None:
        raise UserError('--screenshot needs Chromium: apt-get install chromium')
    if not 0 <= args.example < max(1, len(data.examples)):
        raise UserError(f'--example must lie in 0..{len(data.examples) - 1}, got {args.example}')
    demo = build_demo(data, initial=args.example)
    port = free_port()
    launch(demo, '127.0.0.1', port, block=False)
    try:
        screenshot(f'http://127.0.0.1:{port}/', args.screenshot, args.screenshot_size,
                   until="document.querySelectorAll('#neighbours img').length > 0")  # the answer's thumbnails
    finally:
        demo.close()
    t = data.last_timing
    shown = f"; the page shows encode {t['encode_ms']:.1f} ms + search {t['search_ms']:.2f} ms" if t else ''
    print(f'wrote {args.screenshot}{shown}')
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    data = load_demo_data(args)
    if args.screenshot is not None:
        return take_screenshot(data, args)
    from deephash_zoo.demo.app import build_demo, launch

    host, port = bind_address(args.host, args.port)
    print(f'serving on http://{host}:{port} (Ctrl+C to stop)')
    launch(build_demo(data), host, port)
    return 0


def cli() -> None:
    sys.exit(run_main(main))


if __name__ == '__main__':
    cli()
