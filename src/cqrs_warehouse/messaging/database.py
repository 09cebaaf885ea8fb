"""The database every slice's models bind to, and how it is opened.

Models of every slice bind to ``database`` (a peewee proxy); bootstrap
initialises it from ``DATABASE_URL`` with peewee's own URL parser. Nothing
connects at import time.

On PostgreSQL each slice keeps its tables in a schema of its own, named by
``slice_schema`` in its models' Meta; SQLite has one namespace, so there the
same tables live side by side (their names carry the slice as a prefix).
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url

database = peewee.DatabaseProxy()


class DeferredBeginPostgresqlDatabase(peewee.PostgresqlDatabase):
    """peewee's PostgreSQL database, with BEGIN sent along with the
    transaction's first statement instead of in a round trip of its own, and
    statements whose result nobody reads sent along with the next one or the
    COMMIT (``defer``).

    Every transaction here is short and starts with a statement (a listener's
    claim, the drain's claim, a command's stock update); on PostgreSQL each
    round trip costs the thread a wait and the server a wake-up, and BEGIN
    was one of four to six per transaction. psycopg2 sends "BEGIN; <the
    statement>" as one query string; PostgreSQL runs both, in order, and
    stops at the first error. A transaction that ran no statement sends
    nothing, not even its COMMIT. peewee has no option for this, hence the
    subclass.
    """

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level is not None or getattr(self, "_isolation_level", None) is not None:
            super().begin(isolation_level)
            return
        # Deferred until the next statement on this very connection (opened
        # now if it is not yet: peewee connects on first use).
        self._local.deferred_begin = self.connection()

    def defer(self, sql: str, params: Any = None) -> None:
        """Run ``sql`` in the current transaction, sent along with the
        transaction's next statement or its COMMIT: a round trip fewer, for a
        statement whose result the caller does not read (a listener's write,
        a notification). An error of it is raised by that next statement or
        the COMMIT, and fails the transaction as any error would. Undone
        before it is sent (a rollback, a rollback to a savepoint taken after
        it was deferred), it is never sent. Outside a transaction it runs at
        once.
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
        """Whether a BEGIN is pending on the current connection (and forget it)."""
        pending = getattr(self._local, "deferred_begin", None)
        if pending is None:
            return False
        self._local.deferred_begin = None
        # One left from a connection since closed does not count.
        return pending is self._local.conn

    @property
    def _local(self) -> Any:
        # peewee's per-thread connection state
        return self._state  # type: ignore[attr-defined]


def _bound(connection: Any, sql: str, params: Any) -> str:
    """``sql`` with ``params`` bound, as a query string that peewee passes
    through psycopg2's binding again (with no values: "%%" becomes "%")."""
    return str(connection.cursor().mogrify(sql, params).decode()).replace("%", "%%")


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
    if type(db) is peewee.PostgresqlDatabase:
        db = DeferredBeginPostgresqlDatabase(db.database, **db.connect_params)
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


# --- prepared statements (PostgreSQL) ------------------------------------------
#
# PostgreSQL parses and plans every statement it is sent as text; for the
# command path's statements that was about a third of the server's CPU per
# command (more than the statements' execution). A statement that goes
# through ``execute_prepared`` is PREPAREd once per connection, in a round
# trip of its own the first time the connection runs it, and from then on
# only EXECUTEd. Prepared statements live as long as their connection (a
# rollback keeps them), so the record of what is prepared is kept per
# connection object: a new connection, after a restart of the database for
# instance, prepares again.


@dataclass(frozen=True)
class _Prepared:
    name: str
    prepare: str  # PREPARE <name> AS <the SQL with $1, $2...>
    execute: str  # EXECUTE <name>(%s, ...) with the caller's placeholders


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_prepared_sql: dict[str, _Prepared] = {}
_prepared_on: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def execute_prepared(sql: str, params: Any, *, prefix: str = "", defer: bool = False) -> Any:
    """``database.execute_sql(prefix + sql, params)`` on PostgreSQL, with
    ``sql`` parsed and planned once per connection; returns the cursor. With
    ``defer``, for a statement whose result is not read, it goes with the
    transaction's next statement instead (``DeferredBeginPostgresqlDatabase.defer``)
    and None is returned (peewee's other PostgreSQL databases, a pool's, send it
    at once).

    ``sql`` uses psycopg2's placeholders, either all ``%s`` (``params`` a
    sequence) or all ``%(name)s`` (``params`` a mapping), never ``%%``;
    PostgreSQL infers the parameters' types from where they are used.
    ``prefix`` is SQL sent before it in the same round trip.
    """
    statement = _prepared_sql.get(sql) or _prepare_text(sql)
    connection = database.connection()
    prepared = _prepared_on.get(connection)
    if prepared is None or statement.name not in prepared:
        database.execute_sql(statement.prepare)
        with _prepared_lock:
            _prepared_on.setdefault(connection, set()).add(statement.name)
    if defer and isinstance(database.obj, DeferredBeginPostgresqlDatabase):
        database.obj.defer(prefix + statement.execute, params)
        return None
    return database.execute_sql(prefix + statement.execute, params)


def _prepare_text(sql: str) -> _Prepared:
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
    with _prepared_lock:
        statement = _prepared_sql.get(sql)
        if statement is None:
            name = _statement_name(sql, len(_prepared_sql) + 1)
            execute = f"EXECUTE {name}({', '.join(arguments)})" if arguments else f"EXECUTE {name}"
            statement = _prepared_sql[sql] = _Prepared(
                name=name, prepare=f"PREPARE {name} AS {body}", execute=execute
            )
    return statement


_FIRST_TABLE = re.compile(r'(?:INSERT INTO|UPDATE|FROM)\s+(?:"\w+"\.)?"?(\w+)"?', re.IGNORECASE)


def _statement_name(sql: str, number: int) -> str:
    """``cqrs_<n>_<the first table it names>``: pg_stat_activity shows a prepared
    statement's session as ``EXECUTE <name>(...)``, so an operator (or a test)
    looking for what waits on a table still finds it by the table's name."""
    match = _FIRST_TABLE.search(sql)
    table = match.group(1) if match else "statement"
    return f"cqrs_{number}_{table}"[:63]  # PostgreSQL's longest identifier
