"""Signals between processes through the database: PostgreSQL's LISTEN and NOTIFY.

A commit wakes the drain of every worker process (the outbox's NOTIFY, see
``outbox.py``), and listeners announce the positions they applied to the
API processes whose readers wait on them (read-your-writes). SQLite has no
such signal: ``Signals`` is its form, where nothing crosses processes and
waiters rely on their periodic checks.
"""

from __future__ import annotations

import contextlib
import select
from typing import Any

from playhouse.db_url import connect as connect_url
from playhouse.db_url import parse as parse_url

from ..errors import DatabaseUnavailableError
from .database import Timeouts


class Subscription:
    """A connection of its own that LISTENs on a channel."""

    def wait(self, timeout: float) -> list[str]:
        """The payloads of the notifications that arrived within ``timeout``
        seconds (all that are in, as soon as one is); [] if none."""
        raise NotImplementedError

    def try_lock(self, key: str) -> bool:
        """Take the session lock ``key`` if no one holds it; it goes with this
        connection (a leader's lock goes with its process)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class Signals:
    """No signals: each process relies on its own wake-ups."""

    def subscribe(self, channel: str) -> Subscription | None:
        return None

    def notify(self, database: Any, channel: str, payload: str) -> None:
        """In the open transaction: delivered to listeners if it commits."""


class PostgresSignals(Signals):
    def __init__(self, database_url: str, timeouts: Timeouts | None = None) -> None:
        self.database_url = database_url
        self.timeouts = timeouts

    def subscribe(self, channel: str) -> Subscription:
        return _PostgresSubscription(self.database_url, channel, self.timeouts)

    def notify(self, database: Any, channel: str, payload: str) -> None:
        # Sent with the COMMIT, like the notification itself.
        database.execute_prepared("SELECT pg_notify(%s, %s)", (channel, payload), defer=True)


class _PostgresSubscription(Subscription):
    def __init__(self, database_url: str, channel: str, timeouts: Timeouts | None) -> None:
        # Outside peewee's per-thread connection: LISTEN needs autocommit and
        # lives as long as the subscription. Its statements (LISTEN, a lock it
        # only tries) are quick: the timeouts hold for it too.
        params = parse_url(database_url)
        self._database = connect_url(
            database_url, **(timeouts.connect_params(params) if timeouts else {})
        )
        try:
            self._connection = self._database.connection()
            self._connection.autocommit = True
            with self._connection.cursor() as cursor:
                cursor.execute(f'LISTEN "{channel}"')
        except Exception as error:
            self._database.close()
            raise DatabaseUnavailableError(f"cannot LISTEN on {channel}: {error}") from error

    def wait(self, timeout: float) -> list[str]:
        try:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                return []
            self._connection.poll()
        except Exception as error:
            raise DatabaseUnavailableError(f"lost the LISTEN connection: {error}") from error
        payloads = [notice.payload for notice in self._connection.notifies]
        self._connection.notifies.clear()
        return payloads

    def try_lock(self, key: str) -> bool:
        try:
            with self._connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,))
                (locked,) = cursor.fetchone()
        except Exception as error:
            raise DatabaseUnavailableError(f"lost the LISTEN connection: {error}") from error
        return bool(locked)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection is gone anyway
            self._database.close()
