"""``cqrs-warehouse migrate``: every store's migrations, applied with peewee's runner.

Each store of each slice keeps its migrations in its own folder and its
history in its own table (``<store>_schema_migrations``), so removing a slice
is removing its folder. On PostgreSQL each store's tables, history
included, live in its own schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from playhouse.migrations import Runner

from .messaging.storage import Database
from .slices import Slice, Store

_LOCK_KEY = 0x6371_7273  # any constant: serialises concurrent `migrate` runs


def _stores(slices: Iterable[Slice]) -> Iterator[Store]:
    for slice_ in slices:
        yield from slice_.stores


def _runner(database: Database, store: Store) -> Runner:
    return Runner(
        database,
        str(store.migrations),
        table_name=f"{store.name}_schema_migrations",
        schema=store.schema if database.has_schemas else None,
    )


def migrate(database: Database, slices: Iterable[Slice]) -> list[str]:
    """Apply every pending migration of every store; returns what was applied."""
    applied = []
    # A migration may rewrite a large table: no statement or lock timeout.
    with database.unbounded(), database.exclusively(_LOCK_KEY):
        for store in _stores(slices):
            if database.has_schemas:
                database.execute_sql(f'CREATE SCHEMA IF NOT EXISTS "{store.schema}"')
            applied += [f"{store.name}/{name}" for name in _runner(database, store).up()]
    return applied


def status(database: Database, slices: Iterable[Slice]) -> list[tuple[str, str, bool]]:
    """(store, migration, applied) for every migration known."""
    return [
        (store.name, migration.name, migration.applied is not None)
        for store in _stores(slices)
        for migration in _runner(database, store).status()
    ]
