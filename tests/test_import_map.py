"""The package's import map: the command-line layer sits on top, and no two modules import each other.

Every import counts, the lazy ones inside functions too: a circle that only a deferred import keeps from
failing is still a circle. Edges go to the module named (``from deephash_zoo.hub.checkpoint import x``:
``hub.checkpoint``; ``from . import grid``: ``retrieval.grid`` when that is a module), not to the
packages above it, whose ``__init__`` only re-exports.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

import deephash_zoo

PACKAGE = Path(deephash_zoo.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob('*.py')}


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    is_package = path.name == '__init__.py'
    here = name.split('.') if is_package else name.split('.')[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                base = '.'.join([*here[:len(here) - node.level + 1], *([base] if base else [])])
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _graph()
    assert 'deephash_zoo.evaluation.report' in graph['deephash_zoo.cli.eval']
    assert 'deephash_zoo.hub.folder' in graph['deephash_zoo.hub.card']  # a relative import
    assert 'deephash_zoo.hub.card' in graph['deephash_zoo.hub.checkpoint']  # a lazy one, inside a function


def test_no_module_outside_cli_imports_cli():
    offenders = {name: sorted(t for t in targets if t.startswith('deephash_zoo.cli'))
                 for name, targets in _graph().items() if not name.startswith('deephash_zoo.cli')}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
