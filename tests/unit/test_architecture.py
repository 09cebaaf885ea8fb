"""The invariants of the source's shape that ARCHITECTURE.md states, checked by
reading the source: who imports whom, no cycles, no module-level rebinding,
driver errors met in one place only. No I/O beyond reading files."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "cqrs_warehouse"


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        yield name.removesuffix(".__init__"), path


MODULES = dict(_modules())


def _imports(name: str, path: Path) -> set[str]:
    """The modules of the package that ``name`` imports when it is imported
    (typing-only imports under ``if TYPE_CHECKING`` left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for candidate in [target, *(f"{target}.{alias.name}" for alias in node.names)]:
                if candidate in MODULES and candidate != name:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_the_messaging_core_imports_nothing_of_the_slices_the_web_the_cli_or_the_runtime():
    outside = ("cqrs_warehouse.warehouse", "cqrs_warehouse.web", "cqrs_warehouse.cli")
    outside += ("cqrs_warehouse.runtime", "cqrs_warehouse.slices", "cqrs_warehouse.settings")
    offenders = {
        name: sorted(target for target in targets if target.startswith(outside))
        for name, targets in GRAPH.items()
        if name.startswith("cqrs_warehouse.messaging")
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_nothing_outside_the_warehouse_slice_imports_it():
    importers = sorted(
        name
        for name, targets in GRAPH.items()
        if not name.startswith("cqrs_warehouse.warehouse")
        and any(target.startswith("cqrs_warehouse.warehouse") for target in targets)
    )
    assert importers == []


def test_no_module_imports_itself_through_a_cycle():
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in GRAPH[name]:
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in seen:
                seen.add(target)
                visit(target, [*trail, target])

    for start in GRAPH:
        seen = {start}
        visit(start, [start])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_rebinds_a_module_global(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    assert [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Global)] == []


def test_driver_errors_are_met_only_where_the_storage_calls_the_driver():
    """peewee's and psycopg2's exceptions and SQLSTATEs are translated in one
    module; everything else sees the messaging error tree."""
    markers = ("pgcode", "peewee.OperationalError", "peewee.IntegrityError", "psycopg2.Error")
    markers += ("peewee.DatabaseError", "peewee.InterfaceError", "peewee.PeeweeException")
    where = sorted(
        name
        for name, path in MODULES.items()
        if any(marker in path.read_text(encoding="utf-8") for marker in markers)
    )
    assert where == ["cqrs_warehouse.messaging.storage.database"]


def test_no_module_is_longer_than_a_reader_can_hold():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in lengths.items() if n > 380} == {}
