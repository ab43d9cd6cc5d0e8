"""The search page: pick or upload an image, see its hash code, its nearest database items and the time taken.

:func:`build_demo` makes a ``gr.Blocks`` from a :class:`~deephash_zoo.retrieval.search.HashSearcher` and the
index's database images, the way a Hugging Face Space's ``app.py`` builds its module-level ``demo``;
:func:`launch` serves it (localhost unless told otherwise, ``GRADIO_SERVER_NAME`` as on Spaces). Every
answer goes through ``HashSearcher.search``, as ``deephash-index query`` does, so the page and the command
agree. The page opens on the answer to an example (``?example=N`` asks for another), never empty.

Neighbour thumbnails are framed like the result grids: green when they share a label with an example
query, red when not, grey for uploads (an uploaded image has no label).
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageOps

from deephash_zoo.retrieval import grid
from deephash_zoo.retrieval.search import HashSearcher, SearchResult, bit_string

from .uploads import MAX_UPLOAD_BYTES, UploadError, open_upload

try:
    import gradio as gr
except ImportError:
    raise ImportError("gradio is not installed; pip install 'deephash-zoo[demo]'") from None

__all__ = ['DemoData', 'Example', 'build_demo', 'launch', 'theme']

THUMB = 112  # thumbnail side: Fashion-MNIST's 28 px x 4, nearest neighbour


@dataclass(frozen=True)
class Example:
    """A query image offered on the page, with its label row when known (framing neighbours by relevance)."""

    image: Image.Image
    label: str
    labels: Optional[np.ndarray] = None


@dataclass
class DemoData:
    """What the page shows: the searcher, the index's database images (in index order) and the examples."""

    searcher: HashSearcher
    database: Any  # HashDataset in index order: load_image(i), labels, class_names
    examples: List[Example]
    k: int = 10
    last_timing: Dict[str, float] = field(default_factory=dict)  # encode/search ms of the latest answer

    @property
    def manifest(self) -> Dict[str, Any]:
        return self.searcher.index.manifest


def _thumb(image: Image.Image, color: Tuple[int, int, int]) -> Image.Image:
    """A gallery thumbnail scaled as the grids' cells are, framed in ``color``."""
    return ImageOps.expand(grid.fit_square(image, THUMB), border=5, fill=color)


def _preview(image: Image.Image, side: int = 196) -> Image.Image:
    """Small images (Fashion-MNIST's 28 px) scaled up by a whole factor, so the query is visible as sent."""
    factor = side // max(image.size)
    if factor < 2:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def answer(data: DemoData, image: Image.Image, name: str, labels: Optional[np.ndarray] = None) -> Tuple:
    """The page's outputs for one query image: query, code, gallery, timing, JSON, status."""
    found: SearchResult = data.searcher.search([image], data.k)
    data.last_timing = {'encode_ms': found.encode_ms, 'search_ms': found.search_ms}
    db, names = data.database, data.database.class_names
    positions = found.positions[0]
    # the grids' row of cells: neighbour images, labels, distances and frames by relevance (grey: unknown)
    row = grid.ranked_rows([image], None if labels is None else np.asarray(labels)[None], db, found.positions,
                           found.distances)[0]
    gallery = [(_thumb(cell.image, cell.color), f'd={cell.distance} · {cell.label}') for cell in row[1:]]
    index = data.searcher.index
    timing = (f'encode **{found.encode_ms:.1f} ms** + search **{found.search_ms:.2f} ms** '
              f'({index.kind} index of {len(index):,} items, {data.searcher.device})')
    details = dict(image=name, ids=found.ids[0], distances=[int(d) for d in found.distances[0]],
                   labels=[grid.label_text(db.labels[p], names) if p >= 0 else None for p in positions],
                   encode_ms=round(found.encode_ms, 3), search_ms=round(found.search_ms, 3))
    code = bit_string(found.codes[0], index.bits)
    return _preview(image), code, gallery, timing, details, f'Query: {name}'


def _empty(status: str) -> Tuple:
    return None, '', [], '', {}, status


def build_demo(data: DemoData, initial: Optional[int] = 0) -> gr.Blocks:
    """The page as a ``gr.Blocks`` (not launched), opening on the answer to example ``initial``.

    That first answer is computed here and sent with the page, so it shows at first paint (no round trip;
    a headless browser's screenshot sees it too); ``?example=N`` in the URL asks for another on load.
    """
    m, index = data.manifest, data.searcher.index
    intro = (f"## {m.get('model', 'hash model')}: {index.bits}-bit codes, {len(index):,} "
             f"{m.get('dataset', '')} items\n"
             'Upload an image or pick an example: the page encodes it with the model, searches the '
             f'{index.kind} index by Hamming distance and shows the {data.k} nearest items with their distances '
             'and labels. Frames: green shares a label with the example query, red does not, grey: unknown '
             '(an upload carries no label).')

    def run_example(i: int) -> Tuple:
        ex = data.examples[i]
        return answer(data, ex.image, f'example {i} ({ex.label})', ex.labels)

    def on_upload(path: Optional[str]) -> Tuple:
        if not path:
            return _empty('')
        try:
            image = open_upload(path)
        except UploadError as e:
            gr.Warning(str(e))
            return _empty(f'**Not searched:** {e}')
        return answer(data, image, Path(path).name)

    def on_select(evt: gr.SelectData) -> Tuple:
        return run_example(int(evt.index))

    def on_load(request: gr.Request) -> Tuple:
        raw = request.query_params.get('example') if request is not None else None
        if raw is None:
            return tuple(gr.skip() for _ in range(6))  # keep the answer sent with the page
        try:
            i = int(raw)
            if not 0 <= i < len(data.examples):
                raise ValueError
        except ValueError:
            return _empty(f'**Not searched:** ?example= takes 0 to {len(data.examples) - 1}, got {raw!r}')
        return run_example(i)

    if data.examples and initial is not None:
        first = run_example(initial)
    else:
        first = _empty('Upload an image to search.')
    with gr.Blocks(title=f"deephash-zoo search: {m.get('model', '')}", analytics_enabled=False) as demo:
        gr.Markdown(intro)
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                query = gr.Image(first[0], label='query', type='pil', interactive=False, height=220,
                                 elem_id='query', format='png')
                status = gr.Markdown(first[5], elem_id='status')
                upload = gr.File(label='upload an image', file_types=['image'], type='filepath',
                                 file_count='single', elem_id='upload', height=110)
                picker = gr.Gallery(value=[(_thumb(ex.image, grid.QUERY), ex.label) for ex in data.examples],
                                    label='or pick an example', columns=3, height=330, allow_preview=False,
                                    object_fit='contain', format='png', elem_id='examples')
            with gr.Column(scale=5):
                code = gr.Textbox(first[1], label=f'{index.bits}-bit code (numpy packbits order: +1 -> 1)',
                                  interactive=False, elem_id='code')
                timing = gr.Markdown(first[3], elem_id='timing')
                neighbours = gr.Gallery(first[2], label=f'top {data.k} by Hamming distance (d = distance)',
                                        columns=5, height=350, object_fit='contain', format='png',
                                        elem_id='neighbours')
                with gr.Accordion('as JSON (ids and distances as `deephash-index query --json` prints them)',
                                  open=False):
                    details = gr.JSON(first[4], elem_id='details')
        outputs = [query, code, neighbours, timing, details, status]
        upload.upload(on_upload, upload, outputs, api_name='search')
        picker.select(on_select, None, outputs, api_visibility='private')
        demo.load(on_load, None, outputs, api_visibility='private', show_progress='hidden')
    return demo


def theme() -> gr.themes.Base:
    """Gradio's default theme with the system's fonts: the stock one fetches web fonts, and a demo served
    offline (or a test) should not wait on the network."""
    return gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                             font_mono=['ui-monospace', 'Consolas', 'monospace'])


def launch(demo: gr.Blocks, host: str = '127.0.0.1', port: int = 7860, block: bool = True) -> Any:
    """Serve the page; ``block=False`` returns at once (the caller closes ``demo``)."""
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                       max_file_size=MAX_UPLOAD_BYTES, theme=theme(), footer_links=['api'], quiet=not block)
