"""How statements travel to PostgreSQL: prepared once per connection, and
sent along with the next statement when nobody reads their result.

Mixed into the PostgreSQL databases of ``database.py``. Why each exists is in
docs/decisions/0002-postgresql-round-trips.md; in short, round trips and
parsing were most of the hot paths' cost.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import peewee

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_FIRST_TABLE = re.compile(r'(?:INSERT INTO|UPDATE|FROM)\s+(?:"\w+"\.)?"?(\w+)"?', re.IGNORECASE)


@dataclass(frozen=True)
class _Statement:
    name: str
    prepare: str  # PREPARE <name> AS <the SQL with $1, $2...>
    execute: str  # EXECUTE <name>(%s, ...) with the caller's placeholders


class Prepared(peewee.PostgresqlDatabase):
    """``execute_prepared``: a statement parsed and planned once per connection.

    Prepared statements live as long as their connection (a rollback keeps
    them), so what is prepared is remembered per connection object: a new
    connection, after a restart of the database for instance, prepares again.
    Needs the same server session for the connection's life: a pooler in
    transaction mode in front of PostgreSQL is not supported.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statements: dict[str, _Statement] = {}
        self._prepared_on: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._statements_lock = threading.Lock()

    def execute_prepared(
        self, sql: str, params: Any, *, defer: bool = False, prefix: str = ""
    ) -> Any:
        """``execute_sql(prefix + sql, params)``, with ``sql`` prepared once per
        connection; returns the cursor. With ``defer``, for a statement whose
        result is not read, it goes with the transaction's next statement
        (where the database defers) and None is returned.

        ``sql`` uses psycopg2's placeholders, all ``%s`` (``params`` a
        sequence) or all ``%(name)s`` (a mapping), never ``%%``. ``prefix``
        is SQL sent before it in the same round trip.
        """
        statement = self._statements.get(sql) or self._prepare_text(sql)
        connection = self.connection()
        prepared = self._prepared_on.get(connection)
        if prepared is None or statement.name not in prepared:
            self.execute_sql(statement.prepare)
            with self._statements_lock:
                self._prepared_on.setdefault(connection, set()).add(statement.name)
        if defer:
            self.defer(prefix + statement.execute, params)
            return None
        return self.execute_sql(prefix + statement.execute, params)

    def defer(self, sql: str, params: Any = None) -> None:
        """Where nothing is deferred: run ``sql`` now."""
        self.execute_sql(sql, params)

    def _prepare_text(self, sql: str) -> _Statement:
        if "%%" in sql:
            raise ValueError("execute_prepared does not take %% in its SQL")
        numbers: dict[str, int] = {}  # a named parameter used twice is one parameter
        arguments: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None or name not in numbers:
                arguments.append(match.group(0))
                if name is not None:
                    numbers[name] = len(arguments)
                return f"${len(arguments)}"
            return f"${numbers[name]}"

        body = _PLACEHOLDER.sub(number, sql)
        with self._statements_lock:
            statement = self._statements.get(sql)
            if statement is None:
                name = _statement_name(sql, len(self._statements) + 1)
                execute = (
                    f"EXECUTE {name}({', '.join(arguments)})" if arguments else f"EXECUTE {name}"
                )
                statement = self._statements[sql] = _Statement(
                    name=name, prepare=f"PREPARE {name} AS {body}", execute=execute
                )
        return statement


def _statement_name(sql: str, number: int) -> str:
    """``cqrs_<n>_<the first table it names>``: pg_stat_activity shows a prepared
    statement's session as ``EXECUTE <name>(...)``, so whoever looks for what
    waits on a table still finds it by the table's name."""
    match = _FIRST_TABLE.search(sql)
    table = match.group(1) if match else "statement"
    return f"cqrs_{number}_{table}"[:63]  # PostgreSQL's longest identifier


class DeferredPostgresql(Prepared):
    """BEGIN sent along with the transaction's first statement, and statements
    whose result nobody reads (``defer``) along with the next one or the COMMIT.

    psycopg2 sends "BEGIN; <the statement>" as one query string; PostgreSQL
    runs both, in order, and stops at the first error. A transaction that
    ran no statement sends nothing, not even its COMMIT. peewee has no option
    for this, hence the subclass.
    """

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level is not None or getattr(self, "_isolation_level", None) is not None:
            super().begin(isolation_level)
            return
        # Deferred until the next statement on this very connection (opened
        # now if it is not yet: peewee connects on first use).
        self._local.deferred_begin = self.connection()

    def defer(self, sql: str, params: Any = None) -> None:
        """Run ``sql`` in the current transaction, sent along with its next
        statement or its COMMIT. Its error is raised by that statement or the
        COMMIT, and fails the transaction as any error would. Undone before
        it is sent (a rollback, or a rollback to a savepoint taken after it
        was deferred), it is never sent. Outside a transaction it runs at once.
        """
        if not self.in_transaction():
            self.execute_sql(sql, params)
            return
        connection = self.connection()
        text = _bound(connection, sql, params)
        held: tuple[Any, list[str]] | None = getattr(self._local, "deferred", None)
        if held is None or held[0] is not connection:
            held = (connection, [])
            self._local.deferred = held
        held[1].append(text)

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        if sql.startswith("ROLLBACK TO SAVEPOINT"):
            # Whatever is deferred was deferred inside that savepoint: its
            # SAVEPOINT statement carried what was deferred before.
            self._local.deferred = None
        prefix = self._take_deferred()
        if prefix not in ("", "BEGIN; ") and params is not None:
            # One query string: the statement's values are bound here, as
            # psycopg2 binds them (the deferred statements' text, bound
            # already, may hold a "%").
            sql = _bound(self.connection(), sql, params)
            params = None
        return super().execute_sql(prefix + sql, params)

    def commit(self) -> None:
        prefix = self._take_deferred()
        if prefix == "BEGIN; ":
            return  # the transaction ran nothing
        cursor = super().execute_sql(prefix + "COMMIT")
        if cursor.statusmessage == "ROLLBACK":
            # PostgreSQL answers the COMMIT of a transaction that an error
            # aborted (one that was caught, say) by rolling it back, silently.
            raise peewee.InternalError(
                "the transaction was aborted by an earlier error and is rolled back"
            )

    def rollback(self) -> None:
        if not self._take_deferred().startswith("BEGIN; "):
            super().rollback()

    def _take_deferred(self) -> str:
        """The pending BEGIN and deferred statements (and forget them), as SQL
        to send before the next statement: empty if there are none."""
        prefix = "BEGIN; " if self._take_deferred_begin() else ""
        held = getattr(self._local, "deferred", None)
        if held is not None:
            self._local.deferred = None
            # Those of a connection since closed do not count.
            if held[0] is self._local.conn and held[1]:
                prefix += "; ".join(held[1]) + "; "
        return prefix

    def _take_deferred_begin(self) -> bool:
        pending = getattr(self._local, "deferred_begin", None)
        if pending is None:
            return False
        self._local.deferred_begin = None
        # One left from a connection since closed does not count.
        return pending is self._local.conn

    @property
    def _local(self) -> Any:
        return self._state  # type: ignore[attr-defined]  # peewee's per-thread state


def _bound(connection: Any, sql: str, params: Any) -> str:
    """``sql`` with ``params`` bound, as a query string that peewee passes
    through psycopg2's binding again (with no values: "%%" becomes "%")."""
    return str(connection.cursor().mogrify(sql, params).decode()).replace("%", "%%")
