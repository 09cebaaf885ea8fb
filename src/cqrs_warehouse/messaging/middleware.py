"""Dramatiq middleware the service's workers run with. Used by bootstrap.

``DatabaseConnections`` gives each thread that processes messages (worker
threads, and the consumer threads of listener queues, see broker.py) a
database connection that it keeps between messages and drops after a
connection error, so a worker recovers by itself from a database restart.

``DrainWaker`` runs one thread per worker process that wakes the drain when
the outbox has something: on PostgreSQL when a committed transaction
NOTIFYs the outbox channel, and on every platform once per sweep interval,
which catches a wake-up that was lost. The sweep also runs ``on_sweep``
(bootstrap passes the resend of stuck held messages).

On PostgreSQL, in a process that consumes the drain's queue, the thread runs
the drain itself: a wake-up is then one query away from the publish, with
no broker round trip and no actor in between, and every notification that
arrives while it drains is coalesced into one more pass. Several such
processes drain side by side (the drain claims rows with SKIP LOCKED). One
of them leads (it holds an advisory lock on its LISTEN connection): it
drains as soon as notified, the others FOLLOWER_DELAY later, by which time
they find rows only under a backlog, instead of every process querying for
every commit. When the leader goes, its lock goes with its connection and
another process takes the lead at its next sweep.
Elsewhere (SQLite, the in-process broker) a wake-up is a message to the
drain actor.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from typing import Any

import dramatiq
import peewee
from dramatiq.middleware import Middleware

from .database import database, is_postgres

logger = logging.getLogger(__name__)

_CONNECTION_ERRORS = (peewee.OperationalError, peewee.InterfaceError)

#: Seconds a drain that does not lead waits after a notification (see DrainWaker).
FOLLOWER_DELAY = 0.05


def drop_broken_connection(exception: BaseException | None) -> None:
    """Close this thread's connection after an error that may have broken it."""
    if isinstance(exception, _CONNECTION_ERRORS) and not database.is_closed():
        try:
            database.close()
        except Exception:
            # peewee refuses to close while its transaction stack is not empty,
            # which a ROLLBACK that failed on the dead connection leaves behind;
            # the connection is gone anyway, so forget it.
            logger.debug("closing a broken database connection failed", exc_info=True)
            raw = database.obj._state.conn
            try:
                if raw is not None:
                    raw.close()
            finally:
                database.obj._state.reset()


def discard_dead_connection() -> None:
    """Drop this thread's connection if the server closed it meanwhile (peewee
    opens a new one on the next query)."""
    if not database.is_closed() and getattr(database.connection(), "closed", False):
        drop_broken_connection(peewee.InterfaceError("connection already closed"))


class DatabaseConnections(Middleware):
    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        discard_dead_connection()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        drop_broken_connection(exception)

    def after_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        if not database.is_closed():
            database.close()

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        # A listener queue's consumer thread applies its deliveries itself
        # (see broker.py), with a connection of its own.
        if not database.is_closed():
            database.close()


class DrainWaker(Middleware):
    def __init__(
        self,
        wake: Callable[[], Any],
        *,
        drain: Callable[[], Any] | None = None,
        drain_queue: str | None = None,
        on_sweep: Callable[[], Any] | None = None,
        database_url: str,
        notify_channel: str,
        sweep_interval: float,
    ) -> None:
        self.wake = wake
        self.drain = drain
        self.drain_queue = drain_queue
        self.drains_here = True  # whether this process consumes drain_queue
        self.on_sweep = on_sweep
        self.database_url = database_url
        self.notify_channel = notify_channel
        self.sweep_interval = sweep_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        # A worker started with --queues that leave out the drain's queue
        # does not drain (the processes that consume it do).
        queues = getattr(worker, "consumer_whitelist", None)
        self.drains_here = not queues or self.drain_queue is None or self.drain_queue in queues
        self.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="drain-waker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._send()  # whatever waited while no worker ran
            while not self._stop.is_set():
                try:
                    if is_postgres(database.obj):
                        self._listen_and_wake()
                    else:
                        self._stop.wait(self.sweep_interval)
                        self._sweep()
                except Exception:
                    logger.warning("drain waker failed; retrying in a second", exc_info=True)
                    self._stop.wait(1.0)
        finally:
            # The connection the drain and the sweep used in this thread.
            if not database.is_closed():
                database.close()

    def _listen_and_wake(self) -> None:
        # A connection of its own, outside peewee's per-thread one: LISTEN
        # needs autocommit and lives as long as this loop.
        from playhouse.db_url import connect as connect_url

        listener_db = connect_url(self.database_url)
        connection = listener_db.connection()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'LISTEN "{self.notify_channel}"')
            leading = self._try_to_lead(connection)
            self._send()  # anything committed before LISTEN took effect
            while not self._stop.is_set():
                ready, _, _ = select.select([connection], [], [], self.sweep_interval)
                if ready:
                    if not leading:
                        # The leading process drains at once; the others look
                        # a moment later, when there is still something only
                        # under a backlog, instead of all racing for each row.
                        self._stop.wait(FOLLOWER_DELAY)
                    connection.poll()
                    # Coalesce: every notification that arrived is one wake-up.
                    connection.notifies.clear()
                    self._send()
                else:
                    leading = leading or self._try_to_lead(connection)
                    self._sweep()
        finally:
            listener_db.close()

    def _try_to_lead(self, connection: Any) -> bool:
        """Whether this process is now the one that drains at once on a
        notification: it holds the installation's advisory lock, on the LISTEN
        connection, so the lock goes with the process (or the connection)."""
        if not self.drains_here:
            return False
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (self.notify_channel,))
            (locked,) = cursor.fetchone()
        return bool(locked)

    def _sweep(self) -> None:
        self._send()
        if self.on_sweep is None:
            return
        try:
            self.on_sweep()
        except Exception:
            logger.warning("the periodic sweep failed", exc_info=True)

    def _send(self) -> None:
        if not self.drains_here:
            return
        if self.drain is not None and is_postgres(database.obj):
            self._drain_now()
            return
        try:
            self.wake()
        except Exception:
            logger.warning("could not send the drain a wake-up", exc_info=True)

    def _drain_now(self) -> None:
        assert self.drain is not None
        try:
            self.drain()
        except Exception as error:
            # The rows stay in the outbox; the next notification or sweep
            # publishes them.
            logger.warning("the outbox drain failed; the next wake-up retries", exc_info=True)
            drop_broken_connection(error)
