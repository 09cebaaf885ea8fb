"""The database every slice's models bind to, and how it is opened.

Models of every slice bind to ``database`` (a peewee proxy); bootstrap
initialises it from ``DATABASE_URL`` with peewee's own URL parser. Nothing
connects at import time.

On PostgreSQL each slice keeps its tables in a schema of its own, named by
``slice_schema`` in its models' Meta; SQLite has one namespace, so there the
same tables live side by side (their names carry the slice as a prefix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url

database = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


def open_database(url: str) -> peewee.Database:
    """Open (lazily) the database a ``DATABASE_URL`` names and bind the proxy to it."""
    options: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several threads write (API, drain, listeners): WAL lets readers go
        # on, BEGIN IMMEDIATE takes the write lock up front so a transaction
        # never fails half-way upgrading a read lock, and busy_timeout waits
        # for the lock instead of failing at once.
        options = {
            "pragmas": {
                "journal_mode": "wal",
                "busy_timeout": 30000,
                "synchronous": "normal",
                "foreign_keys": 1,
            },
            "lock_type": "IMMEDIATE",
            "timeout": 30,
        }
        _ensure_parent_directory(url)
    db = connect_url(url, **options)
    database.initialize(db)
    apply_slice_schemas(db)
    return db


def apply_slice_schemas(db: peewee.Database) -> None:
    """Put every model defined so far in its slice's schema (PostgreSQL) or none."""
    pending: list[type[peewee.Model]] = [BaseModel]
    while pending:
        model = pending.pop()
        pending.extend(model.__subclasses__())
        schema = getattr(model._meta, "slice_schema", None)
        model._meta.schema = schema if is_postgres(db) else None


def qualified_name(model: type[peewee.Model]) -> str:
    """The model's table as SQL: "schema"."table" or "table"."""
    schema = model._meta.schema
    table = f'"{model._meta.table_name}"'
    return f'"{schema}".{table}' if schema else table


def is_postgres(db: peewee.Database) -> bool:
    return isinstance(db, peewee.PostgresqlDatabase)


def _ensure_parent_directory(url: str) -> None:
    path = parse_url(url).get("database") or ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
