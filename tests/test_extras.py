"""Optional dependencies: each in one extra, named with its pip line before any work starts."""
import importlib.util
import sys
from pathlib import Path

import pytest

import deephash_zoo
from deephash_zoo.extras import EXTRAS, check_installed, require

ROOT = Path(deephash_zoo.__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None


def _without(monkeypatch, *missing: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name in missing else real(name, *a))


@pytest.mark.skipif(tomllib is None, reason='tomllib is Python 3.11+')
def test_every_optional_module_has_its_extra_and_the_core_stays_small():
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    extras = project['optional-dependencies']
    assert set(EXTRAS.values()) <= set(extras)
    core = ' '.join(project['dependencies']).lower()
    assert 'pycocotools' not in core and 'jinja2' not in core
    assert 'pycocotools' in ' '.join(extras['coco']) and 'Jinja2' in ' '.join(extras['cards'])
    for dep in project['dependencies']:  # ranges, not exact pins: installs beside a user's own torch
        assert '==' not in dep, dep


def test_a_missing_module_is_named_with_its_extra(monkeypatch):
    _without(monkeypatch, 'jinja2')
    with pytest.raises(ImportError, match=r"^jinja2 is not installed; install it with pip install "
                                          r"'deephash-zoo\[cards\]'$"):
        check_installed('jinja2')
    with pytest.raises(ImportError, match=r"no_such_module is not installed"):
        require('no_such_module.sub')


def test_index_build_names_a_missing_faiss_before_any_work(monkeypatch, tmp_path, capsys):
    from deephash_zoo.cli._common import run_main
    from deephash_zoo.cli.index import main

    _without(monkeypatch, 'faiss')
    # the checkpoint does not exist either: faiss is reported first, before loading or encoding anything
    assert run_main(main, ['build', '--checkpoint', str(tmp_path / 'missing'), '--out', str(tmp_path / 'idx')]) == 2
    err = capsys.readouterr().err
    assert "faiss is not installed; install it with pip install 'deephash-zoo[retrieval]'" in err
    assert 'Traceback' not in err


def test_card_rendering_names_a_missing_jinja2(monkeypatch, tmp_path):
    from deephash_zoo.hub.card import render_card

    _without(monkeypatch, 'jinja2')
    with pytest.raises(ImportError, match=r"deephash-zoo\[cards\]"):
        render_card(tmp_path)
