"""The import graph, read with ``ast``: no cycles, and the core never imports the file layer.

Every import counts, including those inside functions (a deferred import still ties two
modules together) — only ``if TYPE_CHECKING:`` blocks are left out, since they never
run. The layers: the core (every module of ``modeconnect`` outside the packages below)
works on state dicts and models and never reads a path; ``modeconnect.io`` holds the
formats and imports the core at most; ``modeconnect.commands`` joins the two; the CLI
(``cli/``, not read here) calls commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "modeconnect"
OUTER_LAYERS = (
    "modeconnect.io",
    "modeconnect.commands",
    "modeconnect.files",
    "modeconnect.integrations",
)


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str) -> str | None:
    """The module of ``MODULES`` that ``name`` (a module or an attribute of one) lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
    assert source is not None
    submodules = {f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES}
    # `from . import x` imports the submodule x alone; `from .m import f` imports m.
    return submodules if len(submodules) == len(node.names) else {source, *submodules}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its code)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skipped:
                for name in _imported(module, node):
                    target = _known(name) if name.startswith("modeconnect") else None
                    if target is not None and target != module:
                        found.add(target)
        graph[module] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def _crossing(lower: tuple[str, ...], upper: tuple[str, ...]) -> list[tuple[str, str]]:
    graph = import_graph()
    return sorted((m, d) for m in graph for d in graph[m] if _in(m, lower) and _in(d, upper))


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


CORE = tuple(m for m in MODULES if m != "modeconnect" and not _in(m, OUTER_LAYERS))


def test_the_core_never_imports_the_file_layer() -> None:
    assert _crossing(CORE, OUTER_LAYERS) == []


def test_formats_never_import_commands() -> None:
    assert _crossing(("modeconnect.io",), ("modeconnect.commands", "modeconnect.files")) == []


def test_the_analysis_sees_deferred_imports_and_cycles() -> None:
    """The checks above can fail: a deferred import and a two-module cycle are found."""
    graph = import_graph()
    assert "modeconnect.spec" in graph["modeconnect.probe"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("name", ["modeconnect.commands.session", "modeconnect.io.hf"])
def test_function_local_imports_count(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    local = [
        n
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef)
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    ]
    graph = import_graph()
    for node in local:
        for imported in _imported(name, node):
            target = _known(imported) if imported.startswith("modeconnect") else None
            if target is not None and target != name:
                assert target in graph[name]


def test_the_type_checking_imports_name_every_export() -> None:
    """``modeconnect/__init__.py`` lists each public name once (``_EXPORTS``); the
    ``TYPE_CHECKING`` block that types them must import exactly those names."""
    import modeconnect

    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in ast.walk(node):
                if isinstance(imp, ast.ImportFrom):
                    typed.update(a.asname or a.name for a in imp.names)
    assert typed == set(modeconnect._EXPORTS)


@pytest.mark.parametrize("old", ["modeconnect.files.align", "modeconnect.pipeline"])
def test_a_moved_module_imports_as_itself_with_a_warning(old: str) -> None:
    """``import modeconnect.files.align`` is the module ``modeconnect.commands.align``: same
    object, same name and spec, so patching or pickling through either name agrees."""
    import importlib
    import sys

    from modeconnect._moved import MOVED

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="moved to"):
        module = importlib.import_module(old)
    new = importlib.import_module(MOVED[old])
    assert module is new
    assert new.__spec__ is not None and new.__spec__.name == new.__name__ == MOVED[old]
