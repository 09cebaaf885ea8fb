"""Statements compiled to SQL once by peewee and run many times with new values.

Building a statement's SQL costs peewee about 0.1-0.2 ms of Python; on the
hot paths (a listener's transaction, a command's outbox append) that was the
largest CPU share in the profiles (bench/profiles), while the statements only
differ in their values. Used by the messaging core and by slices' handlers.

On PostgreSQL they are also prepared once per connection
(``database.execute_prepared``): PostgreSQL then skips parsing and planning
them, most of its CPU for such short statements.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import peewee

from .database import database, execute_prepared, is_postgres


class CompiledQuery:
    """``build(*samples)`` compiled once per database; ``run(*values)`` executes it.

    ``samples`` are distinct values of the right types (they go through the
    fields' conversions), unlike any constant the query holds: each parameter
    of the compiled SQL is matched to the sample it came from, so ``run``
    places the values where peewee put them; a parameter that matches no
    sample is one of the query's constants and keeps its value.
    """

    def __init__(self, build: Callable[..., peewee.Query], *samples: Any) -> None:
        self.build = build
        self.samples = samples
        # Per kind of database: quoting, placeholders and schemas differ.
        self._compiled: dict[type, tuple[str, list[tuple[int | None, Any]]]] = {}
        self._lock = threading.Lock()

    def run(self, *values: Any, defer: bool = False) -> Any:
        """Execute with ``values`` (in the order of the samples); returns the
        cursor (None if ``defer`` put it off, see ``execute_prepared``)."""
        sql, order = self._sql()
        params = [constant if i is None else values[i] for i, constant in order]
        if is_postgres(database.obj):
            return execute_prepared(sql, params, defer=defer)
        return database.execute_sql(sql, params)

    def run_deferred(self, *values: Any) -> None:
        """``run``, for a statement whose result is not read: on PostgreSQL it
        goes with the transaction's next statement or its COMMIT."""
        self.run(*values, defer=True)

    def rows(self, *values: Any) -> list[tuple]:
        cursor = self.run(*values)
        return list(cursor.fetchall()) if cursor.description else []

    def _sql(self) -> tuple[str, list[tuple[int | None, Any]]]:
        kind = type(database.obj)
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
            raise ValueError(f"compiled query parameter {param!r} matches several samples")
        order.append((matches[0], None) if matches else (None, param))
    return order
