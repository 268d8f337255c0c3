"""The package's shape, read from its source with ``ast``: no import cycle, arrows one way between the subpackages,
function-local imports only for optional heavy dependencies, modules of at most 500 lines.

Every ``import`` and ``from ... import`` of every module counts, at module level and inside functions; ``from
archsearch.x import y`` is an edge to the module ``archsearch.x.y`` when that is a module or subpackage, else to
``archsearch.x``. Imports under ``if TYPE_CHECKING:`` do not run and are left out.
"""

from __future__ import annotations

import ast
import graphlib
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "archsearch"

#: The subpackages from the bottom layer up: a module imports from its own layer or a lower one only.
LAYERS = ("util", "builders", "data", "cost", "spec", "training", "search", "report", "calibrate", "cli")

#: What a function may import (deferring an optional or heavy dependency); the top-level module name counts.
DEFERRED = frozenset(
    {"onnx", "onnxruntime", "openvino", "matplotlib", "tensorrt", "optuna_dashboard", "adjustText", "boto3", "scipy"}
)

#: The longest a module may be, and the module allowed to exceed it (the procedural scenes: one job, long).
MAX_LINES = 500
LONG_ALLOWED = frozenset({"archsearch.data.synthetic"})


@dataclass(frozen=True)
class Import:
    """One import statement's target in ``module`` (line ``line``): an archsearch module, or another top-level
    package (``external``); ``local``: inside a function."""

    module: str
    target: str
    line: int
    local: bool
    external: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The archsearch module or subpackage ``name`` names, or its closest enclosing one."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[Import]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[Import] = []

    def add(target: str, node: ast.stmt, local: bool) -> None:
        external = target.split(".")[0] != "archsearch"
        found.append(Import(module, target if external else _resolve(target), node.lineno, local, external))

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit(stmt, local)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, local)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    source = f"{base}.{child.module}" if child.module else base
                else:
                    source = child.module or ""
                if source.split(".")[0] != "archsearch":
                    add(source, child, local)
                    continue
                for alias in child.names:  # `from archsearch.x import y`: the module y when it is one
                    sub = f"{source}.{alias.name}"
                    add(sub if sub in MODULES else source, child, local)
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return found


IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_the_reader_resolves_imports() -> None:
    # the reader itself: subpackages, modules, names inside modules, relative and function-local imports
    edges = {(i.module, i.target) for i in IMPORTS if not i.external}
    assert ("archsearch", "archsearch.builders") in edges
    assert ("archsearch.builders", "archsearch.builders.ndnet") in edges  # from archsearch.builders import ndnet
    assert ("archsearch.builders.registry", "archsearch.util.errors") in edges  # a name inside a module
    assert {"archsearch.util", "archsearch.cli.study_commands", "archsearch.data.synthetic"} <= set(MODULES)
    assert not [i for i in IMPORTS if i.module == "archsearch.data" and i.target == "archsearch.spec"]  # TYPE_CHECKING
    assert any(i.local and i.external for i in IMPORTS)


def test_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if not i.external and i.target != i.module:
            graph[i.module].add(i.target)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        lines = [
            f"{a} -> {b} (line {next(i.line for i in IMPORTS if i.module == a and i.target == b)})"
            for b, a in itertools.pairwise(cycle)
        ]
        pytest.fail("import cycle: " + "; ".join(reversed(lines)))


def test_no_subpackage_imports_a_higher_layer() -> None:
    upward = []
    for i in IMPORTS:
        low, high = _layer(i.module), _layer(i.target)
        if not i.external and low is not None and high is not None and LAYERS.index(high) > LAYERS.index(low):
            upward.append(f"{i.module}:{i.line} imports {i.target} ({low} is below {high})")
    assert not upward, "\n".join(upward)


def local_import_violations() -> list[str]:
    """Function-local imports of anything but a deferred optional heavy dependency, as ``module:line target``."""
    return [
        f"{i.module}:{i.line} {i.target}"
        for i in IMPORTS
        if i.local and not (i.external and i.target.split(".")[0] in DEFERRED)
    ]


def test_function_local_imports_only_defer_heavy_optional_dependencies() -> None:
    violations = local_import_violations()
    assert not violations, f"{len(violations)} function-local imports:\n" + "\n".join(violations)


def long_modules() -> list[str]:
    """Modules over :data:`MAX_LINES` lines (but the allowed one), as ``module: lines``."""
    lengths = {m: len(p.read_text().splitlines()) for m, p in MODULES.items()}
    return [f"{m}: {n}" for m, n in sorted(lengths.items()) if n > MAX_LINES and m not in LONG_ALLOWED]


def test_no_module_over_500_lines() -> None:
    assert not long_modules(), "\n".join(long_modules())


if __name__ == "__main__":  # list the current violations of the two checks
    print("\n".join(local_import_violations()))
    print("\n".join(long_modules()))
