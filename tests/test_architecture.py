"""The architecture, as tests: the import contracts in pyproject.toml ([tool.importlinter]) hold, no two
modules of engine/, app/ and widgets/ import each other in a cycle, and nothing outside engine/runtime/
reaches into another module's private members."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "app", "widgets")


def test_import_contracts_hold():
    """`lint-imports` (import-linter, the venv's own) checks every contract in pyproject.toml."""
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"lint-imports exited {out.returncode}:\n{out.stdout}\n{out.stderr}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (or a module importing
    itself): every cycle lies inside one. Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_cycles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "d"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"], ["d"]]


def test_no_import_cycles_between_modules():
    """Every import counts, lazy ones inside functions and `if TYPE_CHECKING:` ones included."""
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert len(edges) > 50 and sum(map(len, edges.values())) > 100  # the graph really holds the project
    report = []
    for component in _cycles(edges):
        report.append("cycle: " + ", ".join(component))
        for importer in component:
            for imported in sorted(edges[importer] & set(component)):
                for d in graph.get_import_details(importer=importer, imported=imported):
                    report.append(f"    {importer} -> {imported} (line {d['line_number']}: {d['line_contents']})")
    assert not report, "\n".join(report)


# -- private members --------------------------------------------------------------------------------------

# Private names of code that is not ours, each used on purpose. Keyed by the dotted expression before the
# final `._name`; a prefix covers everything under it.
ALLOWED_PRIVATE = {
    # PyTorch's weight-only int8/int4 kernels have no public API; engine/quant wraps them and checks them
    # against plain matmuls (tests/engine/test_quant.py).
    "torch.ops.aten",
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_class_privates(tree: ast.Module) -> set[str]:
    """Private members of the classes this module defines: methods, class attributes, `self._x = ...`."""
    names = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not cls:
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
    return {n for n in names if _is_private(n)}


def _same_package_modules(tree: ast.Module, module: str) -> set[str]:
    """Local names bound to modules of this module's own package (`from engine.quant import int4`)."""
    package = module.rsplit(".", 1)[0]
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == package:
            folder = ROOT / package.replace(".", "/")
            aliases |= {a.asname or a.name for a in node.names if (folder / f"{a.name}.py").is_file()}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.asname and a.name.rsplit(".", 1)[0] == package}
    return aliases


def private_accesses(source: str, module: str) -> list[tuple[int, str]]:
    """(line, expression) of each `x._name` where x is not self / cls / super(), `_name` is not a member of a
    class this module defines, not a name of a sibling module in the same package, and not allowed above."""
    tree = ast.parse(source)
    own = _own_class_privates(tree)
    siblings = _same_package_modules(tree, module)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id in ("self", "cls"):
            continue
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            continue
        if node.attr in own:  # this module's classes, touching each other's privates
            continue
        if isinstance(value, ast.Name) and value.id in siblings:  # a module-private helper of the same package
            continue
        base = _dotted(value)
        if base is not None and any(base == a or base.startswith(a + ".") for a in ALLOWED_PRIVATE):
            continue
        found.append((node.lineno, ast.unparse(node)))
    return sorted(set(found))


def test_private_member_check_flags_what_it_should():
    source = ("import torch\nfrom engine.quant import int4\n"
              "class A:\n    def __init__(self):\n        self._own = 1\n"
              "    def f(self, other, tok):\n"
              "        return (self._own, other._own, super()._x, tok._backend, int4._pack_nibbles,\n"
              "                torch.ops.aten._weight_int8pack_mm, tok.__class__)\n")
    assert private_accesses(source, "engine.quant.concat") == [(7, "tok._backend")]


def test_no_private_member_access_outside_the_runtime():
    """engine/runtime/ may share state between its parts; everything else uses public members only."""
    report = []
    scanned = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("engine", "runtime"):
                continue
            module = ".".join(relative.with_suffix("").parts)
            scanned += 1
            for line, expression in private_accesses(path.read_text(encoding="utf-8"), module):
                report.append(f"{relative}:{line}: {expression}")
    assert scanned > 50
    assert not report, "private members of other modules' objects:\n" + "\n".join(report)
