"""The layers of the house, enforced from the code's own imports.

``core`` decides (pure, stdlib and PyYAML only); ``ipc`` carries calls between processes of
a node (stdlib only); ``node`` acts on the kernel and the engine; ``testbed`` (private
nodes, the multi-node testbed) builds on all of those and ``cli`` sits on top, the one
face of both. Service sidecars and slivers get only what their images carry.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "slicectl"

#: A package may import its own rank and below, never above.
RANK = {"core": 0, "ipc": 1, "saferaw": 1, "admintools": 2, "node": 2, "plc": 2, "sliverapp": 3, "agent": 3,
        "leases": 3, "testbed": 4, "cli": 5}


def imports(path: Path) -> Iterator[tuple[str, int]]:
    """(absolute module, line) of every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: -node.level]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            if mod == "slicectl":
                for a in node.names:
                    yield f"slicectl.{a.name}", node.lineno
            else:
                yield mod, node.lineno


def area(module: str) -> str | None:
    """The slicectl package a module belongs to (``core``, ``node``, ...), else None."""
    parts = module.split(".")
    if parts[0] != "slicectl":
        return None
    return parts[1] if len(parts) > 1 else ""


def py_files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*.py") if "__pycache__" not in p.parts)


def third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in sys.stdlib_module_names and top not in ("slicectl", "__future__")


def test_core_is_pure() -> None:
    """core: only core, the standard library and PyYAML."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}"
           for p in py_files(PKG / "core") for m, line in imports(p)
           if (area(m) not in (None, "core") and m != "slicectl")
           or (third_party(m) and m.split(".")[0] != "yaml")]
    assert bad == []


def test_ipc_and_saferaw_are_stdlib_only() -> None:
    """ipc ships into service images; saferaw into every sliver: stdlib (and core) only."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}"
           for top in ("ipc", "saferaw") for p in py_files(PKG / top) for m, line in imports(p)
           if third_party(m) or area(m) not in (None, "core", "ipc", "saferaw")
           or (top == "saferaw" and area(m) not in (None, "saferaw"))]
    assert bad == []


def test_no_import_runs_up_a_layer() -> None:
    bad = []
    for p in py_files(PKG):
        rel = p.relative_to(PKG).parts
        if len(rel) < 2:
            continue
        mine = rel[0]
        for m, line in imports(p):
            theirs = area(m)
            if theirs and theirs in RANK and RANK[theirs] > RANK[mine]:
                bad.append(f"{p.relative_to(ROOT)}:{line} ({mine}) imports {m} ({theirs})")
    assert bad == []


def test_product_code_never_imports_the_testbed() -> None:
    """What runs on a node or in PLC never needs the testbed; only the command line
    (``slicectl testbed``) reaches it."""
    product = [p for top in (PKG, ROOT / "sensors", ROOT / "auditd") for p in py_files(top)
               if not {"testbed", "cli"} & set(p.relative_to(ROOT).parts)]
    bad = [f"{p.relative_to(ROOT)}:{line}" for p in product for m, line in imports(p)
           if area(m) == "testbed"]
    assert bad == []


def test_sidecars_import_only_what_their_image_carries() -> None:
    from slicectl.node.services import SHARED_PACKAGES

    carried = {p.removeprefix("slicectl/") for p in SHARED_PACKAGES}
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}"
           for top in ("sensors", "auditd") for p in py_files(ROOT / top)
           for m, line in imports(p) if area(m) is not None and area(m) not in carried]
    assert bad == []


def test_no_import_cycles() -> None:
    """Between modules of slicectl (a module and its package's face excepted)."""
    graph: dict[str, set[str]] = {}
    for p in py_files(PKG):
        mod = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        graph[mod] = {m for m, _ in imports(p) if m.startswith("slicectl.")}
    known = set(graph)
    for mod, deps in graph.items():
        # "from slicectl.node import tc" names a module: keep the longest known prefix
        graph[mod] = {next((d[:i] for i in range(len(d), 0, -1) if d[:i] in known
                            and (i == len(d) or d[i] == ".")), d) for d in deps} & known - {mod}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
