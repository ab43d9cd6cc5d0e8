"""Where an experiment's results go: JSON + markdown files, the README block between generated
markers, and one model card per kept checkpoint (rendered by :mod:`deephash_zoo.hub.card`)."""
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

from deephash_zoo.utils import write_atomic

__all__ = ['write_outputs', 'check_readme', 'update_readme', 'markers', 'write_cards', 'DATA_TAGS']

DATA_TAGS = {'fashion-mnist': 'fmnist', 'mosaic': 'mosaic'}  # the Hub repo suffix of a checkpoint trained on it


def markers(key: str) -> tuple:
    """The README's start and end marker lines of one experiment's block."""
    return f'<!-- deephash-experiment:{key}:start -->', f'<!-- deephash-experiment:{key}:end -->'


def write_outputs(result: Dict[str, Any], markdown: str, out_dir: Path, key: str) -> Dict[str, Path]:
    """``OUT/KEY.json`` (raw) and ``OUT/KEY.md`` (tables), each written to a temporary file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {'json': out_dir / f'{key}.json', 'markdown': out_dir / f'{key}.md'}
    write_atomic(paths['json'], (json.dumps(result, indent=2) + '\n').encode())
    write_atomic(paths['markdown'], markdown.encode())
    return paths


def _block(key: str) -> re.Pattern:
    start, end = markers(key)
    return re.compile(re.escape(start) + r'.*?' + re.escape(end), re.S)


def check_readme(readme: Path, key: str) -> str:
    """The text of ``readme``, which must hold both markers of ``key``'s block (a results section is placed
    by a person, filled by code); checked before an experiment runs, and again when its block is written."""
    if not readme.is_file():
        raise ValueError(f'{readme}: not found; --publish fills its results block (or pass --readme)')
    text = readme.read_text()
    if not _block(key).search(text):
        start, end = markers(key)
        raise ValueError(f'{readme} has no block for {key}; add the two lines\n{start}\n{end}\n'
                         'where its tables belong (or pass --readme)')
    return text


def update_readme(readme: Path, key: str, markdown: str) -> None:
    """Replace the text between the two markers of ``key`` in ``readme`` with ``markdown``."""
    text = check_readme(readme, key)
    start, end = markers(key)
    write_atomic(readme, _block(key).sub(lambda _: f'{start}\n{markdown}{end}', text, count=1).encode())


def write_cards(result: Dict[str, Any], cards_dir: Path, efficiency: Optional[Path] = None,
                org: str = 'deephash-zoo') -> List[Path]:
    """One card per kept checkpoint of ``result``: ``CARDS/<model>.<data tag>.md`` with its model-index
    metrics (the checkpoint's own metrics.json, first seed) and the efficiency table when given."""
    from deephash_zoo.evaluation import default_out
    from deephash_zoo.hub.card import render_card, write_card

    tag = DATA_TAGS.get(result['data'], result['data'].replace(':', '-'))
    written = []
    for cell in result['cells']:
        ckpt = cell.get('checkpoint')
        if not ckpt or not (Path(ckpt) / 'model.safetensors').is_file():
            continue
        repo_id = f'{org}/{cell["model"]}.{tag}'
        metrics = default_out(Path(ckpt)) / 'metrics.json'  # as run_cell wrote it
        card = render_card(ckpt, metrics=metrics, efficiency=efficiency, repo_id=repo_id)
        written.append(write_card(card, cards_dir / f'{repo_id.split("/")[-1]}.md'))
    return written
