"""``cqrs-warehouse migrate``: each slice's migrations, applied with peewee's runner.

Each slice keeps its migrations in its own ``migrations/`` folder and its
history in its own table, so removing a slice is removing its folder. On
PostgreSQL each slice's tables, history included, live in its own schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import peewee
from playhouse.migrations import Runner

from .messaging.database import is_postgres

_ROOT = Path(__file__).parent


@dataclass(frozen=True)
class Slice:
    name: str
    directory: Path
    schema: str  # its PostgreSQL schema


SLICES = (
    Slice("messaging", _ROOT / "messaging" / "migrations", "messaging"),
    Slice("warehouse_commands", _ROOT / "warehouse" / "commands" / "migrations", "warehouse"),
    Slice(
        "products_view",
        _ROOT / "warehouse" / "views" / "products" / "migrations",
        "products_view",
    ),
    Slice(
        "low_quantity_notifier",
        _ROOT / "warehouse" / "processors" / "low_quantity" / "migrations",
        "low_quantity_notifier",
    ),
)

_LOCK_KEY = 0x6371_7273  # any constant: serialises concurrent `migrate` runs


def _runner(db: peewee.Database, slice_: Slice) -> Runner:
    return Runner(
        db,
        str(slice_.directory),
        table_name=f"{slice_.name}_schema_migrations",
        schema=slice_.schema if is_postgres(db) else None,
    )


def migrate(db: peewee.Database) -> list[str]:
    """Apply every pending migration of every slice; returns what was applied."""
    applied = []
    with _exclusive(db):
        for slice_ in SLICES:
            if is_postgres(db):
                db.execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{slice_.schema}"')
            applied += [f"{slice_.name}/{name}" for name in _runner(db, slice_).up()]
    return applied


def status(db: peewee.Database) -> list[tuple[str, str, bool]]:
    """(slice, migration, applied) for every migration known."""
    rows = []
    for slice_ in SLICES:
        for migration in _runner(db, slice_).status():
            rows.append((slice_.name, migration.name, migration.applied is not None))
    return rows


@contextmanager
def _exclusive(db: peewee.Database) -> Iterator[None]:
    if not is_postgres(db):
        yield
        return
    db.execute_sql("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
    try:
        yield
    finally:
        db.execute_sql("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
