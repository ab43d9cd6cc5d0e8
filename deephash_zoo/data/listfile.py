"""DeepHash-style list files: ``relative/path.jpg 0 1 0 ...`` per line, the format of the NUS-WIDE,
MS-COCO and CIFAR-10 lists distributed with the DeepHash / HashNet code.

Columns are separated by whitespace, so image paths cannot hold spaces (none of those files' do): a path with one
is refused rather than guessed at, as are header and ``#`` comment lines, which the format has none of. Every error
names the list file and its 1-based line, since these files run to hundreds of thousands of lines.
"""
import warnings
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from .dataset import HashDataset
from .images import IMAGE_SUFFIXES

__all__ = ['load_list_file']

PathLike = Union[str, Path]
_LABELS = frozenset(('0', '1'))
_FORMAT = 'list files hold `relative/path.jpg 0 1 0 ...` on every line, with no header or comment lines'


def _inside_root(rel: str) -> bool:
    """A listed path that stays under the image root: relative, no ``..`` part, no drive."""
    pure = PurePosixPath(rel.replace('\\', '/'))
    return not pure.is_absolute() and '..' not in pure.parts and ':' not in pure.parts[0]


def _key(rel: str) -> str:
    """One spelling per listed path (``./a//b.png`` and ``a/b.png`` name the same image); the plain spelling
    of nearly every line is kept without building a path object (lists run to 270,000 lines)."""
    if '\\' not in rel and './' not in rel and '//' not in rel:
        return rel
    return PurePosixPath(rel.replace('\\', '/')).as_posix()


def _is_label(token: str) -> bool:
    return token in _LABELS


def _spaced_path(tokens: List[str], root: Path) -> Optional[str]:
    """The path a line seems to hold when its image path has spaces: the words before the 0/1 columns, if they
    name an image (by suffix or an existing file)."""
    first_label = next((i for i, tok in enumerate(tokens) if _is_label(tok)), len(tokens))
    if first_label < 2 or first_label == len(tokens) or not all(map(_is_label, tokens[first_label:])):
        return None
    joined = ' '.join(tokens[:first_label])
    named_image = Path(joined).suffix.lower() in IMAGE_SUFFIXES or (root / joined).is_file()
    return joined if named_image else None


def _bad_label(where: str, tokens: List[str], first_line: bool, root: Path) -> ValueError:
    """Why a line's label columns are not all 0 or 1, with the likely cause (comment, header, spaced path)."""
    if tokens[0].startswith('#'):
        return ValueError(f"{where}: a '#' line, but {_FORMAT}; delete it")
    if first_line and not any(map(_is_label, tokens[1:])):
        return ValueError(f'{where}: looks like a header ({" ".join(tokens[:3])} ...), but {_FORMAT}; delete it')
    spaced = _spaced_path(tokens, root)
    if spaced is not None:
        return ValueError(f'{where}: image path {spaced!r} holds a space; the DeepHash list format separates '
                          'columns by whitespace, so paths with spaces are not supported: rename the file or folder')
    col, tok = next((c, t) for c, t in enumerate(tokens[1:], start=2) if not _is_label(t))
    return ValueError(f'{where}: label {tok!r} in column {col} is not 0 or 1 ({_FORMAT})')


def _check_label_counts(path: Path, counts: Counter, first_with: Dict[int, int]) -> None:
    """Refuse rows of different label counts, naming the first odd line against the count most lines have."""
    if len(counts) < 2:
        return
    usual = max(counts, key=lambda n: (counts[n], -first_with[n]))  # ties: the count seen first
    odd = min((n for n in counts if n != usual), key=first_with.__getitem__)
    raise ValueError(f'{path}:{first_with[odd]}: {odd} labels, but {counts[usual]:,} of {sum(counts.values()):,} '
                     f'lines have {usual} (the first: line {first_with[usual]})')


def _warn_unlabelled(path: Path, labels: np.ndarray) -> None:
    """Rows with no label are legal but change the scoring, so say so once."""
    empty = int((labels.sum(1) == 0).sum())
    if empty:
        warnings.warn(f'{path}: {empty:,} of {len(labels):,} rows have no label: such an item is relevant to no '
                      'query (as a query its AP is 0, lowering mAP) and makes the set multi-label', stacklevel=3)


def load_list_file(
        path: PathLike,
        image_root: Optional[PathLike] = None,
        check_images: bool = True,
        *,
        transform: Optional[Callable[..., Any]] = None,
        class_names: Optional[Sequence[str]] = None,
) -> HashDataset:
    """Read a list file into a file-backed :class:`HashDataset` (ids = the listed paths).

    ``image_root`` (default: the list file's folder) is what the listed paths are relative to;
    ``check_images`` stats every image now so a wrong root fails here rather than mid-training. An image listed
    twice is refused (it could be a query and its own database match); rows with no label give a warning.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if not path.is_file():
        raise FileNotFoundError(f'{path}: list file not found')
    try:
        text = path.read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f'{path}: unreadable list file ({e})') from e

    paths: List[str] = []
    line_numbers: List[int] = []
    flat = bytearray()  # n * C bytes: the NUS-WIDE list is 269,648 x 81
    counts: Counter = Counter()  # label count -> lines
    first_with: Dict[int, int] = {}  # label count -> first line with it
    listed_at: Dict[str, int] = {}  # path -> its line
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f'{path}:{lineno}'
        rel, values = tokens[0], tokens[1:]
        if not values:
            raise ValueError(f'{where}: no labels after the image path {rel!r}')
        if not _LABELS.issuperset(values):  # C speed: lists run to 270,000 x 81 tokens
            raise _bad_label(where, tokens, not paths, root)
        if not _inside_root(rel):
            raise ValueError(f'{where}: image path {rel!r} leaves the image root (absolute or with ..); '
                             'list files name images relative to --data-root')
        first = listed_at.setdefault(_key(rel), lineno)
        if first != lineno:
            raise ValueError(f'{where}: image {rel} is listed again (first on line {first}); each image may be '
                             'listed once, or it could be a query and its own match in the database')
        if check_images and not (root / rel).is_file():
            raise FileNotFoundError(f'{where}: image {rel} not found under {root}')
        counts[len(values)] += 1
        first_with.setdefault(len(values), lineno)
        flat.extend(tok == '1' for tok in values)
        paths.append(rel)
        line_numbers.append(lineno)
    if not paths:
        raise ValueError(f'{path}: empty list file (no image lines)')
    _check_label_counts(path, counts, first_with)

    labels = np.frombuffer(flat, dtype=np.uint8).reshape(len(paths), -1)
    _warn_unlabelled(path, labels)
    return HashDataset(labels, paths=paths, image_root=root, transform=transform,
                       ids=paths, class_names=class_names, source=path, line_numbers=line_numbers)
