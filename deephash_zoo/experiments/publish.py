"""Where an experiment's results go: JSON + markdown files, the README block between generated
markers, and one model card per kept checkpoint (rendered by :mod:`deephash_zoo.hub.card`).

A card names a Hub repository, ``deephash-zoo/<model>.<tag>``, so two commands may want to write the same one:
the zoo build's card wins (its checkpoints are the headline weights, trained longer and scored on the full
protocol), and an experiment leaves a card the zoo's published table lists as it is. A card is written only for a
model and tag that :data:`~deephash_zoo.models.published.PUBLISHED_TAGS` registers: ``timm.list_pretrained``
lists exactly the cards, so a card for data without a tag (``mosaic-pair``, ``mosaic-quadrant``) or for a model
published on other data only (``dmlh_cnnf_32``) would name weights timm cannot resolve. Publishing those is a
change to that table.
"""
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from deephash_zoo.models.published import PUBLISHED_TAGS, tag_for_dataset
from deephash_zoo.utils import read_json, write_atomic

__all__ = ['write_outputs', 'check_readme', 'update_readme', 'markers', 'write_cards', 'zoo_cards']


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


def zoo_cards(cards_dir: Path) -> Dict[str, Path]:
    """The cards the zoo build publishes (``<model>.<tag>``), each with the zoo results file that lists it."""
    owned = {}
    for path in sorted((cards_dir / 'results').glob('zoo-*.json')):
        zoo = read_json(path, 'a zoo results file')
        tag = tag_for_dataset(zoo['plan']['data'])
        owned.update({f"{row['model']}.{tag}": path for row in zoo['models']} if tag else {})
    return owned


def _weights_are_the_cells(cell: Dict[str, Any], ckpt: Path, say: Callable[[str], None]) -> bool:
    """Whether the checkpoint folder still holds the weights the cell scored: a run folder is named by model and
    seed only, so another experiment sharing the work folder (or a later run) may have trained over it, and a card
    would pair one experiment's numbers with another's weights."""
    from deephash_zoo.hub.folder import weights_sha256

    found = weights_sha256(ckpt / 'model.safetensors')
    if found == cell.get('weights_sha256'):
        return True
    say(f"no card for {cell['model']}: {ckpt} holds other weights (sha256 {found[:12]}...) than the cell scored "
        f"({str(cell.get('weights_sha256'))[:12]}...); was that work folder shared with another run?")
    return False


def write_cards(result: Dict[str, Any], cards_dir: Path, efficiency: Optional[Path] = None,
                org: str = 'deephash-zoo', say: Callable[[str], None] = print) -> List[Path]:
    """One card per kept checkpoint of ``result``: ``CARDS/<model>.<data tag>.md`` with its model-index
    metrics (the checkpoint's own metrics.json, first seed) and the efficiency table when given; none for data
    the zoo publishes no weights for, nor for a model and tag it does not register, nor where the zoo's card
    stands (see the module docstring)."""
    from deephash_zoo.evaluation import default_out
    from deephash_zoo.hub.card import render_card, write_card

    tag = tag_for_dataset(result['data'])
    if tag is None:
        say(f"no cards: the zoo publishes no weights trained on {result['data']} (its checkpoints stay in the "
            'work folder)')
        return []
    owned = zoo_cards(cards_dir)
    written = []
    for cell in result['cells']:
        ckpt = cell.get('checkpoint')
        if not ckpt or not (Path(ckpt) / 'model.safetensors').is_file():
            continue
        name = f'{cell["model"]}.{tag}'
        if tag not in PUBLISHED_TAGS.get(cell['model'], ()):
            say(f'no card for {cell["model"]}: {tag} is not one of its published tags '
                '(deephash_zoo/models/published.py)')
            continue
        if name in owned:
            say(f'kept {cards_dir / name}.md: the zoo build publishes it ({owned[name]})')
            continue
        if not _weights_are_the_cells(cell, Path(ckpt), say):
            continue
        metrics = default_out(Path(ckpt)) / 'metrics.json'  # as run_cell wrote it
        card = render_card(ckpt, metrics=metrics, efficiency=efficiency, repo_id=f'{org}/{name}')
        written.append(write_card(card, cards_dir / f'{name}.md'))
    return written
