"""Result grids: a few queries, each followed by its nearest database items, as one PNG a person can judge.

Numbers say how well a hashing model ranks; a grid shows what it retrieves. Each row is one query (framed
blue) then its top-k database items by Hamming distance, each captioned with its distance and label, and
framed green when it shares a label with the query (single-label: the same class), red when it does not,
grey when the query's labels are unknown (an image file given by a user). The queries are picked by
:func:`pick_queries`, deterministic from a seed and spread over the labels, so grids of two checkpoints on
the same protocol show the same queries. Pillow only: no plotting library needed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .codes import hamming_distances

__all__ = ['GridCell', 'GridLayout', 'QUERY', 'RELEVANT', 'IRRELEVANT', 'UNKNOWN', 'label_text', 'nearest',
           'pick_queries', 'ranked_rows', 'relevance', 'render_grid', 'grid_png', 'fit_square']

Color = Tuple[int, int, int]
QUERY: Color = (31, 119, 180)  # blue
RELEVANT: Color = (44, 160, 44)  # green
IRRELEVANT: Color = (214, 39, 40)  # red
UNKNOWN: Color = (150, 150, 150)  # grey: relevance unknown
_BACKGROUND: Color = (255, 255, 255)
_TEXT: Color = (30, 30, 30)
_MUTED: Color = (110, 110, 110)


@dataclass(frozen=True)
class GridCell:
    """One image of a row: the query (``distance is None``) or a neighbour with its Hamming distance.

    ``relevant``: True / False frame it green / red; None frames it grey (unknown), or blue for the query.
    """

    image: Image.Image
    label: str = ''
    distance: Optional[int] = None
    relevant: Optional[bool] = None
    query: bool = False

    @property
    def color(self) -> Color:
        if self.query:
            return QUERY
        return UNKNOWN if self.relevant is None else RELEVANT if self.relevant else IRRELEVANT


@dataclass(frozen=True)
class GridLayout:
    """Pixel geometry of a grid: where each cell's frame sits, so tests and callers need not guess."""

    rows: int
    cols: int
    cell: int = 84  # image side (Fashion-MNIST's 28 px x 3)
    frame: int = 4
    gap: int = 8
    query_gap: int = 16  # extra space between the query column and its neighbours
    caption: int = 30  # two text lines under each image
    header: int = 44  # title and column ranks
    margin: int = 10

    @property
    def box(self) -> int:
        """Side of a framed cell."""
        return self.cell + 2 * self.frame

    @property
    def size(self) -> Tuple[int, int]:
        width = 2 * self.margin + self.cols * self.box + (self.cols - 1) * self.gap + self.query_gap
        height = 2 * self.margin + self.header + self.rows * (self.box + self.caption + self.gap) - self.gap
        return width, height

    def origin(self, row: int, col: int) -> Tuple[int, int]:
        """Top-left corner of the frame of cell ``(row, col)`` (column 0 is the query)."""
        x = self.margin + col * (self.box + self.gap) + (self.query_gap if col else 0)
        y = self.margin + self.header + row * (self.box + self.caption + self.gap)
        return x, y


def label_text(row: np.ndarray, class_names: Optional[Sequence[str]]) -> str:
    """A multi-hot label row as class names joined by '+' (class indices when the data set names none)."""
    hits = np.flatnonzero(np.asarray(row))
    return '+'.join(class_names[j] if class_names is not None else str(j) for j in hits)


def relevance(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Boolean ``(k,)``: does each database row share at least one label with the query row (the papers'
    relevance; for single-label data, the same class)."""
    return (np.asarray(db_labels)[:, np.asarray(query_labels) > 0] > 0).any(axis=1)


def nearest(query_packed: np.ndarray, db_packed: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Positions and distances ``(nq, k)`` of the k nearest database codes, ties by database index as in
    :mod:`deephash_zoo.retrieval.metrics`."""
    d = hamming_distances(query_packed, db_packed)
    order = np.argsort(d, axis=1, kind='stable')[:, :k]
    return order, np.take_along_axis(d, order, axis=1).astype(np.int64)


def pick_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` item positions spread over the labels, deterministic from ``seed``.

    The labels are visited in a seeded order, round robin, and each visit takes a not yet chosen item
    carrying that label (drawn with the same generator); so up to ``C`` rows show ``C`` different classes.
    Returns fewer positions only when there are fewer items.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f'labels must be multi-hot (n, C), got shape {labels.shape}')
    rng = np.random.default_rng([seed, 7])
    n = min(int(n), len(labels))
    order = rng.permutation(labels.shape[1])
    taken = np.zeros(len(labels), dtype=bool)
    picks: list[int] = []
    while len(picks) < n:
        added = False
        for c in order:
            pool = np.flatnonzero((labels[:, c] > 0) & ~taken)
            if len(pool) and len(picks) < n:
                i = int(rng.choice(pool))
                taken[i] = added = True
                picks.append(i)
        if not added:  # items without any label: take them in a seeded order
            rest = rng.permutation(np.flatnonzero(~taken))[: n - len(picks)]
            taken[rest] = True
            picks.extend(int(i) for i in rest)
    return np.asarray(picks, dtype=np.int64)


def ranked_rows(query_images: Sequence[Image.Image], query_labels: Optional[np.ndarray], database: Any,
                positions: np.ndarray, distances: np.ndarray) -> List[List[GridCell]]:
    """Grid rows for queries and their ranked database positions.

    ``database`` is a :class:`~deephash_zoo.data.HashDataset` (``load_image``, ``labels``, ``class_names``).
    ``query_labels`` ``(nq, C)`` multi-hot, or None when the queries' labels are unknown (grey frames).
    Unfilled slots of an approximate index (position < 0) are left out.
    """
    names = database.class_names
    rows = []
    for q, image in enumerate(query_images):
        known = query_labels is not None
        first = GridCell(image, label_text(query_labels[q], names) if known else '', query=True)
        pos = np.asarray(positions[q])
        keep = pos >= 0
        pos, dist = pos[keep], np.asarray(distances[q])[keep]
        rel = relevance(query_labels[q], database.labels[pos]) if known else [None] * len(pos)
        rows.append([first] + [GridCell(database.load_image(int(i)), label_text(database.labels[i], names), int(d),
                                        None if r is None else bool(r))
                               for i, d, r in zip(pos, dist, rel, strict=True)])
    return rows


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same pixels on every machine


def fit_square(image: Image.Image, side: int) -> Image.Image:
    """Scale into a ``side`` square keeping the aspect ratio (nearest neighbour for small images: crisp
    pixels), centred on white."""
    image = image.convert('RGB')
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    image = image.resize(size, resample)
    out = Image.new('RGB', (side, side), _BACKGROUND)
    out.paste(image, ((side - size[0]) // 2, (side - size[1]) // 2))
    return out


def _clip(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + '...', font=font) > width:
        text = text[:-1]
    return text + '...'


def render_grid(rows: Sequence[Sequence[GridCell]], title: str = '', layout: Optional[GridLayout] = None
                ) -> Image.Image:
    """The grid as an RGB image: one row per query, cells as given (the query first)."""
    if not rows or not all(rows):
        raise ValueError('a grid needs at least one row, each with at least the query cell')
    cols = max(len(r) for r in rows)
    layout = layout or GridLayout(rows=len(rows), cols=cols)
    canvas = Image.new('RGB', layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    small, bold = _font(11), _font(13)
    draw.text((layout.margin, layout.margin), _clip(draw, title, bold, layout.size[0] - 2 * layout.margin),
              fill=_TEXT, font=bold)
    legend = ('d = Hamming distance to the query; frame: blue = query, green = shares a label with it, '
              'red = does not, grey = unknown')
    draw.text((layout.margin, layout.margin + 16), legend, fill=_MUTED, font=small)
    for col in range(cols):
        x, _ = layout.origin(0, col)
        rank = 'query' if col == 0 else str(col)
        draw.text((x + layout.box / 2, layout.margin + layout.header - 4), rank, fill=_MUTED, font=small,
                  anchor='ms')
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            x, y = layout.origin(r, c)
            draw.rectangle((x, y, x + layout.box - 1, y + layout.box - 1), fill=cell.color)
            canvas.paste(fit_square(cell.image, layout.cell), (x + layout.frame, y + layout.frame))
            top = 'query' if cell.query else f'd={cell.distance}' if cell.distance is not None else ''
            ty = y + layout.box + 2
            draw.text((x, ty), top, fill=_TEXT, font=bold)
            draw.text((x, ty + 14), _clip(draw, cell.label, small, layout.box), fill=_MUTED, font=small)
    return canvas


def grid_png(rows: Sequence[Sequence[GridCell]], title: str = '') -> bytes:
    """:func:`render_grid` encoded as PNG bytes (write them with ``deephash_zoo.utils.write_atomic``)."""
    buf = io.BytesIO()
    render_grid(rows, title).save(buf, format='PNG', optimize=True)
    return buf.getvalue()
