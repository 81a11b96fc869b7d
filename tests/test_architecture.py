"""The import graph of src/emosteer, parsed with ast: no cycle, and no import from the library
(the top-level modules, judges/, extraction/, emotion_meter/, circuits/, data/) up into the
layers built on it (evaluate/, server/, vllm/, cli/). Imports under `if TYPE_CHECKING:` do
not run and are left out; imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import emosteer

ROOT = Path(emosteer.__file__).parent
UPPER = ("emosteer.evaluate", "emosteer.server", "emosteer.vllm", "emosteer.cli")
ENTRY_POINTS = {"emosteer.__main__"}  # `python -m emosteer` runs the CLI


def module_names() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("emosteer", *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The emosteer modules `name` imports (a name imported from a package counts as the
    submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            for child in getattr(node, "orelse", []):
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    names = module_names()
    return {name: imports_of(name, path, set(names)) for name, path in names.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def test_the_parser_sees_imports_cycles_and_type_checking_blocks(tmp_path):
    code = ("from typing import TYPE_CHECKING\nimport emosteer.b\nfrom emosteer import c\n"
            "if TYPE_CHECKING:\n    from emosteer.d import X\nelse:\n    import emosteer.e\n"
            "def f():\n    from . import g\n")
    path = tmp_path / "a.py"
    path.write_text(code)
    known = {f"emosteer.{x}" for x in "abcdeg"}
    assert imports_of("emosteer.a", path, known) == {f"emosteer.{x}" for x in "bceg"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_library_never_imports_the_layers_above_it():
    upward = {name: sorted(m for m in deps if m.startswith(UPPER))
              for name, deps in graph().items()
              if not name.startswith(UPPER) and name not in ENTRY_POINTS}
    assert {k: v for k, v in upward.items() if v} == {}


def test_the_packages_the_library_is_made_of_exist():
    names = module_names()
    for package in ("emosteer.judges", "emosteer.extraction", "emosteer.emotion_meter",
                    "emosteer.protocol"):
        assert package in names
