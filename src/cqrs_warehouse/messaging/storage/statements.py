"""Statements written once with peewee and run many times with new values,
the same on every database. For the hot paths of the core and of slices.

``Statement``: one query, compiled to SQL once per kind of database (building
it costs peewee more than running it costs the service) and run with new
values, prepared on PostgreSQL. ``Bulk``: an INSERT of many rows, one statement whatever the
number of rows (on PostgreSQL one array per column, so that it too is
prepared once). Either may be deferred: on PostgreSQL a statement whose
result nobody reads goes with the transaction's next statement or its
COMMIT. docs/decisions/0002-postgresql-round-trips.md says why.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import peewee

from ..errors import RefusedClaimError


class Statement:
    """``build(*samples)`` compiled once per kind of database; ``run(*values)`` executes it.

    ``samples`` are distinct values of the right types (they go through the
    fields' conversions), unlike any constant the query holds: each
    parameter of the compiled SQL is matched to the sample it came from, so
    ``run`` places the values where peewee put them; a parameter that matches
    no sample is one of the query's constants and keeps its value.
    """

    def __init__(self, build: Callable[..., peewee.Query], *samples: Any) -> None:
        self.build = build
        self.samples = samples
        self.model: type[peewee.Model] = build(*samples).model  # type: ignore[attr-defined]
        self._compiled: dict[type, tuple[str, list[tuple[int | None, Any]]]] = {}
        self._lock = threading.Lock()

    def run(self, *values: Any, defer: bool = False, must_exceed: int | None = None) -> Any:
        """Execute with ``values`` (in the order of the samples); the cursor, or
        None if ``defer`` put it off.

        ``must_exceed``: the statement returns one row whose first column must
        be greater, else the transaction is refused (``RefusedClaimError``; on
        PostgreSQL, deferred, when the transaction sends its next statement or
        commits). A bet of a handler applied ahead of its claim.
        """
        database = self.model._meta.database
        sql, order = self._sql(database)
        params = [constant if i is None else values[i] for i, constant in order]
        if must_exceed is not None:
            return _expect_above(database, sql, params, must_exceed, defer=defer)
        return database.execute_prepared(sql, params, defer=defer)

    def rows(self, *values: Any) -> list[tuple]:
        cursor = self.run(*values)
        return list(cursor.fetchall()) if cursor.description else []

    def _sql(self, database: Any) -> tuple[str, list[tuple[int | None, Any]]]:
        # Per kind of database: quoting, placeholders and schemas differ.
        kind = type(database)
        compiled = self._compiled.get(kind)
        if compiled is None:
            with self._lock:
                sql, params = self.build(*self.samples).sql()
                compiled = self._compiled[kind] = (sql, _order(params, self.samples))
        return compiled


def _order(params: Sequence[Any], samples: Sequence[Any]) -> list[tuple[int | None, Any]]:
    """For each parameter: (index of its sample, None), or (None, the constant)."""
    order: list[tuple[int | None, Any]] = []
    for param in params:
        matches = [
            i for i, sample in enumerate(samples) if type(sample) is type(param) and sample == param
        ]
        if len(matches) > 1:
            raise ValueError(f"statement parameter {param!r} matches several samples")
        order.append((matches[0], None) if matches else (None, param))
    return order


def _expect_above(database: Any, sql: str, params: list[Any], minimum: int, *, defer: bool) -> Any:
    if database.defers:
        # "messaging".expect raises the refused claim's SQLSTATE (migration 0005).
        guarded = (
            f'WITH written AS ({sql}) SELECT "messaging".expect('
            "(SELECT * FROM written LIMIT 1) > %s, 'a value above the expected minimum')"
        )
        return database.execute_prepared(guarded, [*params, minimum], defer=defer)
    rows = database.execute_prepared(sql, params).fetchall()
    if not rows or not rows[0][0] > minimum:
        raise RefusedClaimError(f"the statement returned {rows[:1]!r}, not above {minimum}")
    return None


# PostgreSQL's name of each peewee column type an array parameter may have.
_ARRAY_TYPES = {
    "VARCHAR": "varchar",
    "TEXT": "text",
    "INT": "int",
    "BIGINT": "bigint",
    "BLOB": "bytea",
    "DATETIME": "timestamp",
}


class Bulk:
    """An INSERT of many rows into ``fields``' table, finished by ``finish`` (an
    ON CONFLICT clause, RETURNING...). ``run(columns)`` takes one list per field.

    On PostgreSQL it is one statement whatever the number of rows (its rows
    come from ``unnest`` of one array per column, in order), so it is
    prepared once; one row, a listener's single delivery, goes in a plain
    ``VALUES`` (docs/decisions/0026-one-row-one-values.md). Elsewhere peewee
    builds the INSERT of those rows.
    """

    def __init__(
        self,
        fields: Sequence[peewee.Field],
        finish: Callable[[peewee.ModelInsert], peewee.Query] = lambda insert: insert,
    ) -> None:
        self.fields: list[peewee.Field] = list(fields)
        self.model: type[peewee.Model] = self.fields[0].model
        self.finish = finish
        arrays = ", ".join(f"%s::{_ARRAY_TYPES[f.field_type]}[]" for f in self.fields)
        names = ", ".join(f'"{f.column_name}"' for f in self.fields)
        samples = [[f"\x01{f.column_name}"] for f in self.fields]
        self._arrays = Statement(
            lambda *columns: finish(
                self.model.insert_from(
                    peewee.SQL(
                        f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY "
                        f"AS r({names}, n) ORDER BY n",
                        list(columns),
                    ),
                    self.fields,
                )
            ),
            *samples,
        )
        values = ", ".join("%s" for _ in self.fields)
        self._row = Statement(
            lambda *row: finish(
                self.model.insert_from(peewee.SQL(f"VALUES ({values})", list(row)), self.fields)
            ),
            *(sample for [sample] in samples),
        )

    def run(self, columns: Sequence[Sequence[Any]], *, defer: bool = False) -> Any:
        """Insert the rows whose values ``columns`` holds (one sequence per
        field); the cursor, or None if ``defer`` put it off."""
        database = self.model._meta.database
        if database.array_parameters:
            if len(columns[0]) == 1:
                return self._row.run(*[column[0] for column in columns], defer=defer)
            return self._arrays.run(*[list(column) for column in columns], defer=defer)
        rows = list(zip(*columns, strict=True))
        return database.execute(self.finish(self.model.insert_many(rows, fields=self.fields)))

    def rows(self, columns: Sequence[Sequence[Any]]) -> list[tuple]:
        cursor = self.run(columns)
        return list(cursor.fetchall()) if cursor.description else []
