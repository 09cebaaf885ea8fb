"""What each listener remembers about the messages it received, in the
listener's own transaction: applied ids, the position applied per stream, and
messages held until their predecessors are applied. Owned by the messaging
core; used by listeners.py and dead_letters.py.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import NamedTuple

import peewee

from . import context
from .compiled import CompiledQuery
from .database import BaseModel, database, execute_prepared, is_postgres, qualified_name
from .message import Message
from .schemas import SchemaRegistry


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ProcessedMessage(BaseModel):
    """Ids of messages without a stream position that each listener applied."""

    listener = peewee.CharField(max_length=100)
    message_id = peewee.CharField(max_length=36)

    class Meta:
        table_name = "messaging_processed_messages"
        slice_schema = "messaging"
        primary_key = peewee.CompositeKey("listener", "message_id")


class StreamPosition(BaseModel):
    """The position of the last message of each stream a listener applied."""

    listener = peewee.CharField(max_length=100)
    stream = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()
    held = peewee.IntegerField(default=0)  # how many messages it holds (a hint)

    class Meta:
        table_name = "messaging_stream_positions"
        slice_schema = "messaging"
        primary_key = peewee.CompositeKey("listener", "stream")


class HeldMessage(BaseModel):
    """A message that arrived before its predecessor in its stream."""

    listener = peewee.CharField(max_length=100)
    stream = peewee.CharField(max_length=255)
    position = peewee.BigIntegerField()
    message_id = peewee.CharField(max_length=36)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()  # the version the listener reads
    written_version = peewee.IntegerField(null=True)  # when it was written with another
    payload = peewee.BlobField()
    predecessors = peewee.TextField(null=True)
    required = peewee.BigIntegerField()  # the position that must be applied first
    held_at = peewee.DateTimeField(default=_utcnow)
    correlation_id = peewee.CharField(max_length=64, null=True)

    class Meta:
        table_name = "messaging_held_messages"
        slice_schema = "messaging"
        primary_key = peewee.CompositeKey("listener", "stream", "position")

    def to_message(self, registry: SchemaRegistry) -> Message:
        """The held message, as it was handed to the listener that held it."""
        return Message(
            id=self.message_id,
            type=self.type,
            schema_version=self.schema_version,
            payload=registry.decode(self.type, self.schema_version, bytes(self.payload)),
            stream=self.stream,
            position=self.position,
            predecessors=json.loads(self.predecessors) if self.predecessors else None,
            written_version=self.written_version,
            correlation_id=self.correlation_id,
        )


def first_time(listener: str, message_id: str) -> bool:
    """Record ``message_id`` as applied by ``listener``; False if it already was.

    A concurrent delivery of the same id waits on the insert until the first
    commits, then conflicts.
    """
    inserted = (
        ProcessedMessage.insert(listener=listener, message_id=message_id)
        .on_conflict_ignore()
        .as_rowcount()
        .execute()
    )
    return bool(inserted)


_L, _S, _P, _R = "\x01listener", "\x01stream", 10**15 + 7, 10**15 + 11

# The fast path, one statement: advance the listener's position in the stream
# to the message's if every earlier message it receives is applied (its
# position is at least ``required``) and the message is new (position below
# it); returns the count of held messages. The row stays locked until commit.
_CLAIM_NEW_STREAM_OR_FREE = CompiledQuery(
    lambda listener, stream, position: (
        StreamPosition.insert(listener=listener, stream=stream, position=position, held=0)
        .on_conflict(
            conflict_target=[StreamPosition.listener, StreamPosition.stream],
            update={StreamPosition.position: peewee.EXCLUDED.position},
            where=(StreamPosition.position < peewee.EXCLUDED.position),
        )
        .returning(StreamPosition.held)
    ),
    _L,
    _S,
    _P,
)
_CLAIM_AFTER_PREDECESSOR = CompiledQuery(
    lambda listener, stream, position, required: (
        StreamPosition.update(position=position)
        .where(
            (StreamPosition.listener == listener)
            & (StreamPosition.stream == stream)
            & (StreamPosition.position >= required)
            & (StreamPosition.position < position)
        )
        .returning(StreamPosition.held)
    ),
    _L,
    _S,
    _P,
    _R,
)
_LOCK = CompiledQuery(
    lambda listener, stream: (
        StreamPosition.insert(listener=listener, stream=stream, position=0, held=0)
        .on_conflict(
            conflict_target=[StreamPosition.listener, StreamPosition.stream],
            update={StreamPosition.position: StreamPosition.position},
        )
        .returning(StreamPosition.position, StreamPosition.held)
    ),
    _L,
    _S,
)
_SET = CompiledQuery(
    lambda listener, stream, position, held: StreamPosition.update(
        position=position, held=held
    ).where((StreamPosition.listener == listener) & (StreamPosition.stream == stream)),
    _L,
    _S,
    _P,
    _R,
)


def claim(listener: str, stream: str, position: int, required: int) -> int | None:
    """Take ``position`` as applied if it is next; the held count, or None if not."""
    if required == 0:
        rows = _CLAIM_NEW_STREAM_OR_FREE.rows(listener, stream, position)
    else:
        rows = _CLAIM_AFTER_PREDECESSOR.rows(listener, stream, position, required)
    return int(rows[0][0]) if rows else None


# The SQLSTATE that ``messaging.claim_next`` and ``messaging.expect`` raise
# (migration 0005).
REFUSED_CLAIM = "WQ001"


def claim_ahead(listener: str, stream: str, position: int, required: int) -> None:
    """``claim``, sent along with the transaction's next statement or its
    COMMIT (PostgreSQL, ``DeferredBeginPostgresqlDatabase`` only): instead of
    answering, that statement fails (``refused_claim``) unless ``position``
    is next and no held message waits for it, and the transaction with it.
    """
    execute_prepared(_CLAIM_NEXT_SQL, [listener, stream, position, required], defer=True)


# (FROM names the prepared statement after the function: cqrs_<n>_claim_next.)
_CLAIM_NEXT_SQL = 'SELECT * FROM "messaging".claim_next(%s::varchar, %s::varchar, %s, %s)'


def refused_claim(error: BaseException) -> bool:
    """Whether ``error`` (peewee's, wrapping psycopg2's) is the refusal of
    ``claim_ahead`` or of an expectation (``listeners.claiming_ahead``)."""
    return getattr(getattr(error, "orig", None), "pgcode", None) == REFUSED_CLAIM


class Run(NamedTuple):
    """Consecutive messages of one stream in a batch, each the next the
    listener needs after the one before: they can be taken as applied at once."""

    stream: str
    required: int  # the position that must be applied before the first
    first: int  # the first's position
    last: int  # the last's position


def claim_runs(listener: str, runs: Sequence[Run]) -> dict[str, int]:
    """``claim`` for several streams at once (one run each): the position of each
    run's stream becomes its last if the run's first message is next; returns
    the held count of each stream claimed.

    The rows are locked in stream order, as one message at a time would lock
    them, so that batches of the same listener in other workers cannot
    deadlock with this one; every row of the runs' streams stays locked until
    commit, claimed or not. On PostgreSQL that is two or three statements
    whatever the number of runs, instead of one per message.
    """
    if not runs:
        return {}
    if not is_postgres(database.obj):
        # SQLite: the transaction holds the database's write lock already,
        # and its statements are calls within the process.
        claimed = {}
        for run in runs:
            applied, held = lock_position(listener, run.stream)
            if run.required <= applied < run.first:
                set_position(listener, run.stream, run.last, held)
                claimed[run.stream] = held
        return claimed
    table = qualified_name(StreamPosition)
    streams = [run.stream for run in runs]
    current = {
        stream: (int(position), int(held))
        for stream, position, held in execute_prepared(
            _LOCK_MANY_SQL.format(table=table), {"listener": listener, "streams": streams}
        ).fetchall()
    }
    claimed, advanced, new = {}, [], []
    for run in runs:
        if run.stream in current:
            applied, held = current[run.stream]
            if run.required <= applied < run.first:
                claimed[run.stream] = held
                advanced.append(run)
        elif run.required == 0:
            new.append(run)
    if advanced:
        execute_prepared(
            _ADVANCE_MANY_SQL.format(table=table),
            {
                "listener": listener,
                "streams": [run.stream for run in advanced],
                "positions": [run.last for run in advanced],
            },
        )
    if new:
        # A stream that another transaction creates meanwhile is left out
        # (after waiting for it): that message then takes the one-by-one path.
        for (stream,) in execute_prepared(
            _INSERT_MANY_SQL.format(table=table),
            {
                "listener": listener,
                "streams": [run.stream for run in new],
                "positions": [run.last for run in new],
            },
        ).fetchall():
            claimed[stream] = 0
    return claimed


_LOCK_MANY_SQL = (
    "SELECT stream, position, held FROM {table} "
    # (Code-point order, as ``listeners.batch_order`` sorts a batch.)
    'WHERE listener = %(listener)s AND stream = ANY(%(streams)s) ORDER BY stream COLLATE "C" '
    "FOR UPDATE"
)
_ADVANCE_MANY_SQL = (
    "UPDATE {table} AS p SET position = c.position "
    "FROM unnest(%(streams)s::varchar[], %(positions)s::bigint[]) AS c(stream, position) "
    "WHERE p.listener = %(listener)s AND p.stream = c.stream"
)
_INSERT_MANY_SQL = (
    "INSERT INTO {table} (listener, stream, position, held) "
    "SELECT %(listener)s::varchar, c.stream, c.position, 0 "
    "FROM unnest(%(streams)s::varchar[], %(positions)s::bigint[]) AS c(stream, position) "
    'ORDER BY c.stream COLLATE "C" ON CONFLICT (listener, stream) DO NOTHING RETURNING stream'
)


def lock_position(listener: str, stream: str) -> tuple[int, int]:
    """(position applied, messages held) of ``listener`` in ``stream``, locked
    until the transaction ends (on SQLite the transaction began IMMEDIATE and
    holds the database's write lock anyway)."""
    [(position, held)] = _LOCK.rows(listener, stream)
    return int(position), int(held)


def set_position(listener: str, stream: str, position: int, held: int) -> None:
    _SET.run(listener, stream, position, max(0, held))


def hold(listener: str, message: Message, required: int, registry: SchemaRegistry) -> None:
    assert message.stream is not None and message.position is not None
    inserted = (
        HeldMessage.insert(
            listener=listener,
            stream=message.stream,
            position=message.position,
            message_id=message.id,
            type=message.type,
            schema_version=message.schema_version,
            written_version=message.written_version,
            payload=registry.encode(message.type, message.schema_version, message.payload),
            correlation_id=context.correlation_id.get(),
            predecessors=json.dumps(message.predecessors) if message.predecessors else None,
            required=required,
        )
        .on_conflict_ignore()
        .as_rowcount()
        .execute()
    )
    if inserted:
        _count_held(listener, message.stream, +1)


def next_held(listener: str, stream: str) -> HeldMessage | None:
    """The earliest message ``listener`` holds in ``stream``."""
    return (
        HeldMessage.select()
        .where((HeldMessage.listener == listener) & (HeldMessage.stream == stream))
        .order_by(HeldMessage.position)
        .first()
    )


def release(listener: str, stream: str, position: int) -> None:
    """Forget a held message (it was resent or dead-lettered).

    The stream's held count is left as it is: touching its row here would
    take the locks in the opposite order to a listener's transaction (row,
    then held messages) and deadlock with it. The count is a hint that only
    spares the common case a query; the next apply in the stream, finding
    nothing held, sets it back to 0.
    """
    HeldMessage.delete().where(
        (HeldMessage.listener == listener)
        & (HeldMessage.stream == stream)
        & (HeldMessage.position == position)
    ).execute()


def _count_held(listener: str, stream: str, change: int) -> None:
    # Only called with the stream's row already locked by this transaction.
    StreamPosition.update(held=StreamPosition.held + change).where(
        (StreamPosition.listener == listener) & (StreamPosition.stream == stream)
    ).execute()


def ready_held(limit: int = 500) -> list[HeldMessage]:
    """Held messages whose predecessors are applied but which are still held
    (their handler failed when they were up next); oldest first."""
    query = (
        HeldMessage.select(HeldMessage)
        .join(
            StreamPosition,
            on=(
                (StreamPosition.listener == HeldMessage.listener)
                & (StreamPosition.stream == HeldMessage.stream)
                & (HeldMessage.required <= StreamPosition.position)
                & (HeldMessage.position > StreamPosition.position)
            ),
        )
        .order_by(HeldMessage.held_at)
        .limit(limit)
    )
    if is_postgres(database.obj):
        query = query.for_update(of=HeldMessage, skip_locked=True)
    return list(query)
