"""The transactional outbox: commands append messages here, the drain empties it.

Commands (any slice) call ``append`` inside ``transaction()``; the drain
alone claims and deletes rows. Appending outside a transaction is an error:
a message must commit or roll back with the state change that caused it.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial

import peewee

from . import context
from .compiled import CompiledQuery
from .database import BaseModel, database, execute_prepared, is_postgres, qualified_name
from .errors import ConfigurationError, NotInTransactionError, OutboxError
from .message import Message
from .schemas import SchemaRegistry

logger = logging.getLogger(__name__)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class OutboxRecord(BaseModel):
    """A message waiting to be published. Owned by the messaging core."""

    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36, unique=True)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.BlobField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    created_at = peewee.DateTimeField(default=_utcnow)
    correlation_id = peewee.CharField(max_length=64, null=True)
    predecessors = peewee.TextField(null=True)

    class Meta:
        table_name = "messaging_outbox"
        slice_schema = "messaging"


class StreamHead(BaseModel):
    """The last position of each routing key in each stream (the write side's)."""

    stream = peewee.CharField(max_length=255)
    routing_key = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()

    class Meta:
        table_name = "messaging_stream_heads"
        slice_schema = "messaging"
        primary_key = peewee.CompositeKey("stream", "routing_key")


class Outbox:
    """Appends encoded messages and wakes the drain once a transaction commits.

    On PostgreSQL the wake-up is a NOTIFY sent inside the transaction, which
    PostgreSQL delivers only if it commits. Elsewhere ``nudge`` (set by
    bootstrap: it sends the drain actor a message) runs after the commit; a
    failed nudge is logged by the caller of ``nudge`` and the periodic sweep
    picks the rows up.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        notify_channel: str,
        nudge: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.notify_channel = notify_channel
        self.nudge = nudge
        self._state = threading.local()

    def append(self, message: Message) -> Message:
        """Store ``message``; returns it as listeners will receive it."""
        if not database.in_transaction():
            raise NotInTransactionError(
                f"outbox append of {message.type} outside a transaction: wrap the command in "
                "messaging.transaction() so the message commits with its state change"
            )
        data = self.registry.encode(message.type, message.schema_version, message.payload)
        if message.stream is not None and (message.position is None or message.position < 1):
            raise OutboxError(f"message {message.id} has a stream but no position >= 1")
        if is_postgres(database.obj):
            predecessors = self._append_postgres(message, data)
        else:
            predecessors = self._append_generic(message, data)
        self._state.appended = True
        return message if predecessors is None else replace(message, predecessors=predecessors)

    def _append_postgres(self, message: Message, data: bytes) -> dict[str, int] | None:
        """One statement, one round trip: read and advance the stream's heads,
        insert the row (its predecessors computed by PostgreSQL) and NOTIFY the
        drain, which PostgreSQL delivers only if the transaction commits (a
        NOTIFY repeated in one transaction is delivered once)."""
        values = {
            "message_id": message.id,
            "type": message.type,
            "schema_version": message.schema_version,
            "payload": data,
            "stream": message.stream,
            "position": message.position,
            "created_at": _utcnow(),
            "correlation_id": context.correlation_id.get(),
            "routing_key": message.routing_key,
            "channel": self.notify_channel,
        }
        sql = _postgres_statements().in_stream if message.stream else _postgres_statements().plain
        (stored,) = execute_prepared(sql, values).fetchall()
        predecessors = stored[0]
        return None if predecessors is None else json.loads(predecessors)

    def _append_generic(self, message: Message, data: bytes) -> dict[str, int] | None:
        predecessors = None
        if message.stream is not None:
            assert message.position is not None
            predecessors = _advance_stream(message.stream, message.routing_key, message.position)
        OutboxRecord.insert(
            message_id=message.id,
            type=message.type,
            schema_version=message.schema_version,
            payload=data,
            stream=message.stream,
            position=message.position,
            correlation_id=context.correlation_id.get(),
            predecessors=None if predecessors is None else json.dumps(predecessors),
        ).execute()
        return predecessors

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A database transaction that wakes the drain if it appended anything
        and, once it has committed, runs what ``after_commit`` was given in it.
        Nested, it is a savepoint: undone, it forgets what ``after_commit`` was
        given within it."""
        outermost = not database.in_transaction()
        if outermost:
            self._state.appended = False
            self._state.after_commit = []
        callbacks: list[Callable[[], None]] | None = getattr(self._state, "after_commit", None)
        given_before = len(callbacks) if callbacks is not None else 0
        try:
            with database.atomic():
                yield
        except BaseException:
            if callbacks is not None:
                del callbacks[given_before:]
            raise
        finally:
            if outermost:
                self._state.after_commit = None
        if not outermost:
            return
        # On PostgreSQL each append NOTIFYs in its own statement.
        if self._state.appended and not is_postgres(database.obj):
            self._wake_drain()
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                # The transaction has committed: what it did stands.
                logger.exception("a callback after the commit failed")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction has committed (at once
        outside a transaction); never if it rolls back, nor if the savepoint
        of a nested ``transaction()`` it was given in is undone. For what a
        command or a listener does outside the database: a log line, a call
        out, so that it happens only for a committed change. It runs in the
        context (``messaging.context``) it was given in. An error it raises is
        logged; the commit stands.
        """
        callbacks: list[Callable[[], None]] | None = getattr(self._state, "after_commit", None)
        if callbacks is not None:
            # Run in the context it was given in: its log lines keep the
            # correlation id and message of the moment.
            callbacks.append(partial(contextvars.copy_context().run, callback))
        elif database.in_transaction():
            raise NotInTransactionError(
                "after_commit inside a transaction that messaging.transaction() did not "
                "begin: it cannot tell when that one commits"
            )
        else:
            callback()

    def _wake_drain(self) -> None:
        if self.nudge is None:
            return
        try:
            self.nudge()
        except Exception:
            # The transaction has committed: the command stands. The periodic
            # sweep publishes what this wake-up would have.
            logger.warning("could not wake the outbox drain; the sweep will", exc_info=True)


def _advance_stream(stream: str, routing_key: str, position: int) -> dict[str, int]:
    """The stream's last position per routing key before ``position``; records
    ``position`` as the last of ``routing_key``. (PostgreSQL does the same in
    the append's one statement, see ``_PostgresStatements``.)

    The caller serialises its stream (the warehouse commands hold the SKU's
    row lock), so reading and advancing the heads cannot interleave.
    """
    heads = {str(key): int(last) for key, last in _HEADS.rows(stream)}
    _ADVANCE_HEAD.run(stream, routing_key, position)
    return {key: last for key, last in heads.items() if last < position}


@dataclass(frozen=True)
class _PostgresStatements:
    """The append as one statement: ``in_stream`` for a message with a stream
    position, ``plain`` without. Each returns one row: the predecessors as
    stored (JSON text, NULL without a stream).

    ``previous`` reads the heads as the statement's snapshot has them: before
    ``advanced`` moves this routing key's head (the parts of one statement do
    not see each other's writes). The caller holds its stream's lock (the
    warehouse commands, the SKU's row), so no other writer moves the heads
    between this statement's snapshot and its write. pg_notify is in the
    final SELECT so that it runs exactly once, for the one row inserted.
    """

    in_stream: str
    plain: str

    @classmethod
    def build(cls) -> _PostgresStatements:
        heads, outbox = qualified_name(StreamHead), qualified_name(OutboxRecord)
        insert = (
            f"INSERT INTO {outbox} (message_id, type, schema_version, payload, stream, "
            "position, created_at, correlation_id, predecessors) "
            "VALUES (%(message_id)s, %(type)s, %(schema_version)s, %(payload)s, %(stream)s, "
            "%(position)s, %(created_at)s, %(correlation_id)s, {predecessors}) "
            "RETURNING predecessors"
        )
        in_stream = (
            "WITH previous AS ("
            f"SELECT routing_key, position FROM {heads} "
            "WHERE stream = %(stream)s AND position < %(position)s), "
            f"advanced AS (INSERT INTO {heads} (stream, routing_key, position) "
            "VALUES (%(stream)s, %(routing_key)s, %(position)s) "
            "ON CONFLICT (stream, routing_key) DO UPDATE SET position = EXCLUDED.position), "
            # An empty map is stored as {} (a stream message always has one).
            "stored AS ("
            + insert.format(
                predecessors="(SELECT COALESCE(jsonb_object_agg(routing_key, position), "
                "'{}'::jsonb)::text FROM previous)"
            )
            + ") SELECT predecessors, pg_notify(%(channel)s, '') FROM stored"
        )
        plain = (
            "WITH stored AS ("
            + insert.format(predecessors="NULL")
            + ") SELECT predecessors, pg_notify(%(channel)s, '') FROM stored"
        )
        return cls(in_stream=in_stream, plain=plain)


_postgres: _PostgresStatements | None = None


def _postgres_statements() -> _PostgresStatements:
    # Built on first use: the tables' schemas are set when the database is opened.
    global _postgres
    if _postgres is None:
        _postgres = _PostgresStatements.build()
    return _postgres


_HEADS = CompiledQuery(
    lambda stream: StreamHead.select(StreamHead.routing_key, StreamHead.position).where(
        StreamHead.stream == stream
    ),
    "\x01stream",
)
_ADVANCE_HEAD = CompiledQuery(
    lambda stream, routing_key, position: StreamHead.insert(
        stream=stream, routing_key=routing_key, position=position
    ).on_conflict(
        conflict_target=[StreamHead.stream, StreamHead.routing_key],
        update={StreamHead.position: peewee.EXCLUDED.position},
    ),
    "\x01stream",
    "\x01key",
    10**15 + 7,
)


_current: Outbox | None = None


def install(outbox: Outbox) -> None:
    """Make ``outbox`` the one that ``append`` and ``transaction`` use (bootstrap does this)."""
    global _current
    _current = outbox


def current() -> Outbox:
    if _current is None:
        raise ConfigurationError("the outbox is not set up: call cqrs_warehouse.bootstrap first")
    return _current


def append(message: Message) -> Message:
    """Append ``message`` to the outbox (inside a transaction); returns it as stored."""
    return current().append(message)


@contextmanager
def transaction() -> Iterator[None]:
    """The transaction a command (or a listener) runs in; see Outbox.transaction."""
    with current().transaction():
        yield


def after_commit(callback: Callable[[], None]) -> None:
    """Run ``callback`` once the current transaction commits; see Outbox.after_commit."""
    current().after_commit(callback)


def pending_records(limit: int | None = None) -> list[OutboxRecord]:
    query = OutboxRecord.select().order_by(OutboxRecord.id)
    if limit is not None:
        query = query.limit(limit)
    return list(query)


def status() -> tuple[int, float | None]:
    """How many rows wait in the outbox, and the age in seconds of the oldest."""
    count, oldest = OutboxRecord.select(
        peewee.fn.COUNT(OutboxRecord.id), peewee.fn.MIN(OutboxRecord.created_at)
    ).scalar(as_tuple=True)
    if not count or oldest is None:
        return 0, None
    if isinstance(oldest, str):  # SQLite hands aggregates back as text
        oldest = datetime.datetime.fromisoformat(oldest)
    return int(count), max(0.0, (_utcnow() - oldest).total_seconds())


def decode_record(record: OutboxRecord, registry: SchemaRegistry) -> Message:
    return Message(
        id=record.message_id,
        type=record.type,
        schema_version=record.schema_version,
        payload=registry.decode(record.type, record.schema_version, bytes(record.payload)),
        stream=record.stream,
        position=record.position,
        predecessors=json.loads(record.predecessors) if record.predecessors else None,
    )
