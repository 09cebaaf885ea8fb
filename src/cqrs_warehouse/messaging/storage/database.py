"""The database: opened from a URL, with driver errors translated where the driver is called.

``open_database`` gives one of the peewee databases below. Each translates
peewee's exceptions (which wrap the driver's) into the messaging error tree
at its calls to the driver (connect, execute, commit, rollback), so no other
code inspects a driver error. On top of peewee they offer what the hot
paths need (``execute_prepared``, ``defer``); PostgreSQL's are in
``postgres.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from playhouse.db_url import parse as parse_url
from playhouse.pool import PooledPostgresqlDatabase

from ..errors import (
    CommitOutcomeUnknownError,
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    MessagingError,
    MissingTableError,
    RefusedClaimError,
    StorageError,
    TransientStorageError,
)
from .postgres import DeferredPostgresql, Prepared

#: The SQLSTATE that ``messaging.claim_next`` and ``messaging.expect`` raise (migration 0005).
REFUSED_CLAIM = "WQ001"
_CONFLICTS = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock timeout
_MISSING = {"42P01", "3F000", "42883"}  # undefined table, schema, function
_TIMEOUTS = {"57014"}  # statement cancelled (statement_timeout; a lock_timeout is a conflict)


class _Translating(peewee.Database):
    """Raises the messaging error tree instead of peewee's exceptions."""

    def connect(self, reuse_if_open: bool = False) -> bool:
        try:
            return super().connect(reuse_if_open)
        except peewee.PeeweeException as error:
            raise self.translate(error) from error

    def execute_sql(self, sql: str, params: Any = None) -> Any:
        try:
            return super().execute_sql(sql, params)
        except peewee.PeeweeException as error:
            raise self.translate(error) from error

    def begin(self, *args: Any) -> None:
        try:
            super().begin(*args)
        except peewee.PeeweeException as error:
            raise self.translate(error) from error

    def commit(self) -> None:
        try:
            super().commit()
        except peewee.PeeweeException as error:
            translated = self.translate(error)
            if type(translated) is DatabaseUnavailableError:
                # The COMMIT may have reached the server before the connection broke.
                translated = CommitOutcomeUnknownError(
                    f"the connection broke during COMMIT; the transaction may have committed: "
                    f"{error}"
                )
            raise translated from error

    def rollback(self) -> None:
        # peewee rolls back after a failed COMMIT; on the broken connection that
        # fails too, and its error must not hide that the outcome is unknown.
        failed_commit = sys.exc_info()[1]
        try:
            super().rollback()
        except peewee.PeeweeException as error:
            if isinstance(failed_commit, CommitOutcomeUnknownError):
                raise failed_commit from error
            raise self.translate(error) from error

    def translate(self, error: peewee.PeeweeException) -> MessagingError:
        code = getattr(getattr(error, "orig", None), "pgcode", None)
        if code == REFUSED_CLAIM:
            return RefusedClaimError(str(error))
        if code in _CONFLICTS:
            return ConflictError(str(error))
        if code in _TIMEOUTS:
            return TransientStorageError(str(error))
        if code in _MISSING or "no such table" in str(error):
            return MissingTableError(f"{error} (has `cqrs-warehouse migrate` run?)")
        if "database is locked" in str(error):
            return ConflictError(str(error))
        if getattr(getattr(error, "orig", None), "sqlite_errorname", None) == "SQLITE_ERROR":
            # sqlite3 raises OperationalError for a statement it refuses too.
            return StorageError(str(error))
        if isinstance(error, peewee.OperationalError | peewee.InterfaceError):
            return DatabaseUnavailableError(str(error))
        return StorageError(str(error))

    def discard_broken_connection(self) -> None:
        """Forget this thread's connection after it broke (peewee opens a new
        one on the next statement)."""
        db = self
        try:
            db.close()
        except Exception:
            # peewee refuses to close while its transaction stack is not
            # empty, which a ROLLBACK that failed on the dead connection
            # leaves behind; the connection is gone anyway.
            raw = db._state.conn  # type: ignore[attr-defined]
            try:
                if raw is not None:
                    raw.close()
            except Exception:
                pass  # already broken
            finally:
                db._state.reset()  # type: ignore[attr-defined]

    def discard_dead_connection(self) -> None:
        """Drop this thread's connection if the server closed it meanwhile."""
        db = self
        if not db.is_closed() and getattr(db._state.conn, "closed", False):  # type: ignore[attr-defined]
            self.discard_broken_connection()


class SqliteDatabase(_Translating, peewee.SqliteDatabase):
    """SQLite: one namespace (no schemas); statements are not prepared nor deferred
    (its statements are calls within the process)."""

    has_schemas = False
    defers = False
    array_parameters = False

    def execute_prepared(self, sql: str, params: Any, *, defer: bool = False) -> Any:
        return self.execute_sql(sql, params)

    @contextmanager
    def exclusively(self, key: int) -> Iterator[None]:
        """Nothing to take: a SQLite file has one writer at a time anyway."""
        yield

    @contextmanager
    def unbounded(self) -> Iterator[None]:
        """Nothing to lift: SQLite has no statement timeout (its busy_timeout stays)."""
        yield


class _Exclusive(peewee.PostgresqlDatabase):
    @contextmanager
    def exclusively(self, key: int) -> Iterator[None]:
        """Hold PostgreSQL's advisory lock ``key`` on this connection for the
        block, waiting for it as long as it takes (lock_timeout would end the wait)."""
        with self.unbounded():
            self.execute_sql("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            self.execute_sql("SELECT pg_advisory_unlock(%s)", (key,))

    @contextmanager
    def unbounded(self) -> Iterator[None]:
        """No statement or lock timeout on this thread's connection, for work
        that may rightly take long (migrations, rebuilds, prunes, bulk loads).
        Inside a transaction until it ends (SET LOCAL), else for the block."""
        local = self.in_transaction()
        cursor = self.execute_sql(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        before = cursor.fetchone()
        self.execute_sql(
            "SELECT set_config('statement_timeout', '0', %s), set_config('lock_timeout', '0', %s)",
            (local, local),
        )
        try:
            yield
        finally:
            if not local and not self.is_closed():
                # (A connection that broke meanwhile is gone, and its settings with it.)
                with suppress(DatabaseUnavailableError):
                    self.execute_sql(
                        "SELECT set_config('statement_timeout', %s, false), "
                        "set_config('lock_timeout', %s, false)",
                        before,
                    )


class PostgresDatabase(_Translating, _Exclusive, DeferredPostgresql):
    """PostgreSQL: a schema per slice, prepared statements, BEGIN and
    result-less statements sent along with the next statement (``postgres.py``)."""

    has_schemas = True
    defers = True
    array_parameters = True


class PooledPostgresDatabase(_Translating, _Exclusive, Prepared, PooledPostgresqlDatabase):
    """``postgresql+pool://``: prepared statements, nothing deferred (a pooled
    connection's state is not tracked across checkouts)."""

    has_schemas = True
    defers = False
    array_parameters = True


Database = SqliteDatabase | PostgresDatabase | PooledPostgresDatabase

_SCHEMES: dict[str, type] = {
    "sqlite": SqliteDatabase,
    "postgres": PostgresDatabase,
    "postgresql": PostgresDatabase,
    "postgres+pool": PooledPostgresDatabase,
    "postgresql+pool": PooledPostgresDatabase,
}


@dataclass(frozen=True)
class Timeouts:
    """PostgreSQL's limits on every connection: seconds to connect (libpq's
    ``connect_timeout``), to run a statement and to wait for a lock (0: none)."""

    connect: int = 0
    statement: float = 0.0
    lock: float = 0.0

    def connect_params(self, url_params: dict[str, Any]) -> dict[str, Any]:
        """psycopg2's arguments; what the URL's query sets itself wins."""
        options = (
            f"-c statement_timeout={_milliseconds(self.statement)} "
            f"-c lock_timeout={_milliseconds(self.lock)}"
        )
        if url_params.get("options"):
            options += f" {url_params['options']}"  # later -c settings win
        params = {"options": options}
        if self.connect:
            params["connect_timeout"] = url_params.get("connect_timeout", self.connect)
        return params


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000)) if seconds else 0


def open_database(url: str, timeouts: Timeouts | None = None) -> Database:
    """The database a ``DATABASE_URL`` names; it connects on first use.
    ``timeouts`` apply to PostgreSQL (default: none)."""
    scheme = url.partition("://")[0]
    cls = _SCHEMES.get(scheme)
    if cls is None:
        raise ConfigurationError(
            f"DATABASE_URL: {scheme!r} is not supported; use sqlite:///FILE or postgresql://..."
        )
    options = parse_url(url)
    if cls is SqliteDatabase:
        # Several threads write (API, drain, listeners): WAL lets readers go
        # on, BEGIN IMMEDIATE takes the write lock up front so a transaction
        # never fails half-way upgrading a read lock, and busy_timeout waits
        # for the lock instead of failing at once.
        options.update(
            pragmas={
                "journal_mode": "wal",
                "busy_timeout": 30000,
                "synchronous": "normal",
                "foreign_keys": 1,
            },
            lock_type="IMMEDIATE",
            timeout=30,
        )
        path = options.get("database") or ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif timeouts is not None:
        options.update(timeouts.connect_params(options))
    return cls(**options)
