"""Where the outbox keeps its rows: appended by commands, taken by the drain.

``OutboxStore`` is the interface and the SQLite form; ``PostgresOutboxStore``
does each operation in one statement. Used by ``messaging.outbox`` and
``messaging.drain`` only.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import peewee

from ..message import Message
from .models import OutboxRecord, StreamHead, qualified_name, utcnow
from .statements import Statement


class OutboxRow(NamedTuple):
    """An outbox row as the drain takes it (the attributes of OutboxRecord)."""

    id: int
    message_id: str
    type: str
    schema_version: int
    payload: Any  # bytes, or a memoryview on PostgreSQL
    stream: str | None
    position: int | None
    correlation_id: str | None
    predecessors: str | None  # JSON text
    # The W3C trace context of the write (messaging/tracing.py); none when traces are off.
    traceparent: str | None = None
    tracestate: str | None = None


_ROW_FIELDS = [getattr(OutboxRecord, name) for name in OutboxRow._fields]
#: The largest id a row can have (the column is a BIGINT).
LAST_ID = 2**63 - 1


class OutboxStore:
    """The outbox table and the stream heads, through peewee (SQLite)."""

    #: Whether an append wakes the drain by itself when its transaction commits.
    wakes_drain = False

    def append(
        self,
        message: Message,
        payload: bytes,
        correlation_id: str | None,
        trace_context: tuple[str | None, str | None] = (None, None),
    ) -> dict[str, int] | None:
        """Store ``message`` (its Avro ``payload``) in the open transaction;
        returns its predecessors: for each routing key, the stream's last
        position before it (None without a stream).

        The caller serialises its stream (the warehouse's commands hold the
        SKU's row), so reading and advancing the heads cannot interleave.
        """
        predecessors = None
        if message.stream is not None:
            assert message.position is not None
            heads = {str(key): int(last) for key, last in _HEADS.rows(message.stream)}
            _ADVANCE_HEAD.run(message.stream, message.routing_key, message.position)
            predecessors = {key: last for key, last in heads.items() if last < message.position}
        OutboxRecord.insert(
            message_id=message.id,
            type=message.type,
            schema_version=message.schema_version,
            payload=payload,
            stream=message.stream,
            position=message.position,
            correlation_id=correlation_id,
            predecessors=None if predecessors is None else json.dumps(predecessors),
            traceparent=trace_context[0],
            tracestate=trace_context[1],
        ).execute()
        return predecessors

    def last_position(self, stream: str) -> int:
        """The last position appended in ``stream`` (0 if none)."""
        return max((int(last) for _, last in _HEADS.rows(stream)), default=0)

    def take(self, limit: int, start: int = 0, end: int = LAST_ID) -> list[OutboxRow]:
        """The oldest rows with ids from ``start`` to ``end``, deleted by the open
        transaction (they come back if it rolls back). On SQLite the
        transaction began IMMEDIATE: it holds the write lock, so no other
        drain takes them meanwhile."""
        query = (
            OutboxRecord.select(*_ROW_FIELDS)
            .where(OutboxRecord.id.between(start, end))
            .order_by(OutboxRecord.id)
            .limit(limit)
        )
        rows = [OutboxRow(*row) for row in query.tuples().iterator()]
        if rows:
            OutboxRecord.delete().where(OutboxRecord.id.in_([row.id for row in rows])).execute()
        return rows

    def take_published(self, ids: Sequence[int]) -> None:
        """Delete the rows ``ids``, whose messages the drain published from their
        notifications, in the open transaction; a row another drain has taken
        meanwhile is left to it."""
        OutboxRecord.delete().where(OutboxRecord.id.in_(list(ids))).execute()

    def status(self) -> tuple[int, float | None]:
        """How many rows wait, and the age in seconds of the oldest."""
        count, oldest = OutboxRecord.select(
            peewee.fn.COUNT(OutboxRecord.id), peewee.fn.MIN(OutboxRecord.created_at)
        ).scalar(as_tuple=True)
        if not count or oldest is None:
            return 0, None
        if isinstance(oldest, str):  # SQLite hands aggregates back as text
            oldest = datetime.datetime.fromisoformat(oldest)
        return int(count), max(0.0, (utcnow() - oldest).total_seconds())

    def pending(self, limit: int | None = None) -> list[OutboxRecord]:
        """The rows waiting, oldest first."""
        query = OutboxRecord.select().order_by(OutboxRecord.id)
        return list(query.limit(limit) if limit is not None else query)


_HEADS = Statement(
    lambda stream: StreamHead.select(StreamHead.routing_key, StreamHead.position).where(
        StreamHead.stream == stream
    ),
    "\x01stream",
)
_ADVANCE_HEAD = Statement(
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


class PostgresOutboxStore(OutboxStore):
    """Each operation in one statement, prepared once per connection.

    An append reads and advances the stream's heads, inserts the row (its
    predecessors computed by PostgreSQL) and NOTIFYs the drain with the row
    (its id alone if the row does not fit in a notification), which
    PostgreSQL delivers only if the transaction commits: the leading drain
    publishes it from there, and only then takes it (``take_published``,
    docs/decisions/0025-publish-the-notified-row.md). ``take``
    starts at an id the drain was notified of (``messaging.drain``), so that
    its index scan does not walk the entries of the rows taken before it,
    which stay in the index until a vacuum. It deletes the batch with
    ``FOR UPDATE SKIP LOCKED``, so several drains take different rows, and
    turns ``synchronous_commit`` off for its transaction: were PostgreSQL to
    crash before writing that commit, the rows would come back and be
    published again, which listeners recognise. Its plan keeps the index on
    ``id`` (``_TAKE_SETTINGS``).
    """

    wakes_drain = True

    def __init__(self, database: Any, notify_channel: str) -> None:
        self.database = database
        self.notify_channel = notify_channel
        self._sql: _Statements | None = None

    def append(
        self,
        message: Message,
        payload: bytes,
        correlation_id: str | None,
        trace_context: tuple[str | None, str | None] = (None, None),
    ) -> dict[str, int] | None:
        values = {
            "message_id": message.id,
            "type": message.type,
            "schema_version": message.schema_version,
            "payload": payload,
            "stream": message.stream,
            "position": message.position,
            "created_at": utcnow(),
            "correlation_id": correlation_id,
            "traceparent": trace_context[0],
            "tracestate": trace_context[1],
            "routing_key": message.routing_key,
            "channel": self.notify_channel,
        }
        statements = self._statements()
        sql = statements.append_in_stream if message.stream else statements.append
        ((predecessors, _),) = self.database.execute_prepared(sql, values).fetchall()
        return None if predecessors is None else json.loads(predecessors)

    def take(self, limit: int, start: int = 0, end: int = LAST_ID) -> list[OutboxRow]:
        take = self._statements().take
        cursor = self.database.execute_prepared(take, (start, end, limit), prefix=_TAKE_SETTINGS)
        # RETURNING does not keep the subquery's order: publish oldest first.
        return sorted((OutboxRow(*row) for row in cursor.fetchall()), key=lambda r: r.id)

    def take_published(self, ids: Sequence[int]) -> None:
        # SKIP LOCKED: never waits for another drain.
        take = self._statements().take_published
        self.database.execute_prepared(take, (list(ids),), prefix=_TAKE_SETTINGS)

    def _statements(self) -> _Statements:
        # Built on first use: the tables' schemas are set when the runtime binds them.
        if self._sql is None:
            self._sql = _postgres_statements()
        return self._sql


# The take's transaction: an asynchronous commit (docs/decisions/0013), and
# the index on id whatever the statistics say of a table that is empty one
# second and holds a backlog the next (docs/decisions/0022).
_TAKE_SETTINGS = "SET LOCAL synchronous_commit TO OFF; SET LOCAL enable_seqscan TO OFF; "


#: PostgreSQL's NOTIFY takes payloads shorter than this, in bytes.
_NOTIFY_LIMIT = 8000


def notified_row(payload: str) -> OutboxRow | None:
    """The row an append's notification carries (its fields as a JSON array,
    the payload in base64); None if it carries only the id (the row did not
    fit) or anything else."""
    if not payload.startswith("["):
        return None
    try:
        row = OutboxRow(*json.loads(payload))
        return row._replace(payload=base64.b64decode(row.payload, validate=False))
    except (ValueError, TypeError):
        return None


def notified_id(payload: str) -> int | None:
    """The id of the row an append's notification names; None for anything else."""
    if payload.isdecimal():
        return int(payload)
    row = notified_row(payload)
    return row.id if row is not None else None


class _Statements(NamedTuple):
    append_in_stream: str
    append: str
    take: str
    take_published: str


def _postgres_statements() -> _Statements:
    """The statements of ``PostgresOutboxStore``.

    ``previous`` reads the heads as the statement's snapshot has them: before
    ``advanced`` moves this routing key's head (the parts of one statement do
    not see each other's writes). pg_notify is in the final SELECT so that it
    runs exactly once, for the one row inserted, with that row.
    """
    heads, outbox = qualified_name(StreamHead), qualified_name(OutboxRecord)
    # The row (as ``notified_row`` reads it), or its id where the row would
    # not fit in a notification.
    fields = ", ".join(
        "encode(payload, 'base64')" if name == "payload" else name for name in OutboxRow._fields
    )
    notify = (
        "SELECT predecessors, pg_notify(%(channel)s, CASE WHEN octet_length(note) < "
        f"{_NOTIFY_LIMIT} THEN note ELSE id::text END) "
        f"FROM (SELECT id, predecessors, json_build_array({fields})::text AS note FROM stored) "
        "AS appended"
    )
    insert = (
        f"INSERT INTO {outbox} (message_id, type, schema_version, payload, stream, "
        "position, created_at, correlation_id, traceparent, tracestate, predecessors) "
        "VALUES (%(message_id)s, %(type)s, %(schema_version)s, %(payload)s, %(stream)s, "
        "%(position)s, %(created_at)s, %(correlation_id)s, %(traceparent)s, %(tracestate)s, "
        "{predecessors}) "
        f"RETURNING {', '.join(OutboxRow._fields)}"
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
        + f") {notify}"
    )
    plain = "WITH stored AS (" + insert.format(predecessors="NULL") + f") {notify}"
    take = (
        f"DELETE FROM {outbox} WHERE id IN ("
        f"SELECT id FROM {outbox} WHERE id BETWEEN %s AND %s ORDER BY id LIMIT %s "
        "FOR UPDATE SKIP LOCKED) "
        f"RETURNING {', '.join(OutboxRow._fields)}"
    )
    take_published = (
        f"DELETE FROM {outbox} WHERE id IN ("
        f"SELECT id FROM {outbox} WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED)"
    )
    return _Statements(in_stream, plain, take, take_published)
