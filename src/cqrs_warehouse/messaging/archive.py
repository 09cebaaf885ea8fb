"""The event archive and listener rebuilds.

``archive_message`` is a listener handler: bind it to ``#`` in
listeners.yaml and it keeps every message, as written, in
``messaging_archive``. ``rebuild`` empties one listener's state and replays
the archive to it alone while live traffic goes on; ``prune`` drops archived
messages older than a given age (a rebuild can only replay what is kept).

How a rebuild stays exact under live traffic: the reset happens in one
transaction that briefly locks the listener bookkeeping tables, and takes a
snapshot of what the listener had applied. Afterwards, live messages of a
stream are held (the listener's positions start again from 0) until the
replay reaches their predecessors; replayed messages the live actor already
applied are recognised as duplicates. The rebuild ends once the archive,
which may lag behind the listener, covers the snapshot and is replayed.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import peewee

from . import context, dead_letters, listener_state, outbox
from .database import BaseModel, database, execute_prepared, is_postgres, qualified_name
from .errors import MessagingError
from .listeners import apply_message
from .message import Message, batch_handler_for, rollback_safe
from .routing import ListenerSpec
from .schemas import SchemaRegistry
from .transport import envelope_from_record, message_from_envelope

logger = logging.getLogger(__name__)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class ArchivedMessage(BaseModel):
    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36, unique=True)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.BlobField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    predecessors = peewee.TextField(null=True)
    correlation_id = peewee.CharField(max_length=64, null=True)
    archived_at = peewee.DateTimeField(default=_utcnow, index=True)

    class Meta:
        table_name = "messaging_archive"
        slice_schema = "messaging"


@rollback_safe
def archive_message(message: Message) -> None:
    """Listener handler: keep ``message`` as it was written."""
    row = _row(message, outbox.current().registry)
    if is_postgres(database.obj):
        # A third of all deliveries: one statement prepared once per
        # connection rather than built by peewee and parsed each time, and
        # sent with the COMMIT (nothing reads its result).
        execute_prepared(
            _ARCHIVE_SQL.format(archive=qualified_name(ArchivedMessage)), row, defer=True
        )
    else:
        ArchivedMessage.insert(**row).on_conflict_ignore().execute()


@batch_handler_for(archive_message)
def archive_messages(messages: list[Message]) -> None:
    """The same for several messages, in one statement."""
    registry = outbox.current().registry
    rows = [_row(message, registry) for message in messages]
    if is_postgres(database.obj):
        # One array per column: the statement is the same whatever the number
        # of rows, so it is prepared once (peewee building a statement of
        # 100 rows took a sixth of the workers' time under a backlog).
        columns = {column: [row[column] for row in rows] for column in _ARCHIVE_COLUMNS}
        execute_prepared(
            _ARCHIVE_MANY_SQL.format(archive=qualified_name(ArchivedMessage)), columns, defer=True
        )
    else:
        ArchivedMessage.insert_many(rows).on_conflict_ignore().execute()


def _row(message: Message, registry: SchemaRegistry) -> dict[str, object]:
    version = message.written_version or message.schema_version
    return {
        "message_id": message.id,
        "type": message.type,
        "schema_version": version,
        "payload": message.encoded
        if message.encoded is not None
        else registry.encode(message.type, version, message.payload),
        "stream": message.stream,
        "position": message.position,
        "predecessors": json.dumps(message.predecessors) if message.predecessors else None,
        "correlation_id": message.correlation_id
        if message.correlation_id is not None
        else context.correlation_id.get(),
        "archived_at": _utcnow(),
    }


_ARCHIVE_SQL = (
    "INSERT INTO {archive} (message_id, type, schema_version, payload, stream, position, "
    "predecessors, correlation_id, archived_at) VALUES (%(message_id)s, %(type)s, "
    "%(schema_version)s, %(payload)s, %(stream)s, %(position)s, %(predecessors)s, "
    "%(correlation_id)s, %(archived_at)s) ON CONFLICT DO NOTHING"
)


_ARCHIVE_COLUMNS = {
    "message_id": "varchar",
    "type": "varchar",
    "schema_version": "int",
    "payload": "bytea",
    "stream": "varchar",
    "position": "bigint",
    "predecessors": "text",
    "correlation_id": "varchar",
    "archived_at": "timestamp",
}
_ARCHIVE_MANY_SQL = (
    "INSERT INTO {{archive}} ({names}) SELECT {names} FROM unnest({arrays}) "
    "WITH ORDINALITY AS r({names}, n) ORDER BY n ON CONFLICT DO NOTHING"
).format(
    names=", ".join(_ARCHIVE_COLUMNS),
    arrays=", ".join(f"%({name})s::{kind}[]" for name, kind in _ARCHIVE_COLUMNS.items()),
)


def prune(older_than: datetime.timedelta) -> int:
    """Drop archived messages older than ``older_than``; returns how many."""
    cutoff = _utcnow() - older_than
    return int(ArchivedMessage.delete().where(ArchivedMessage.archived_at < cutoff).execute())


class RebuildError(MessagingError):
    """A listener cannot be rebuilt (no reset declared, no archive, the archive lags)."""


@dataclass
class RebuildReport:
    replayed: int = 0
    applied: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(frozen=True)
class _Snapshot:
    positions: dict[str, int]
    message_ids: set[str]


def rebuild(
    spec: ListenerSpec,
    archive: ListenerSpec,
    registry: SchemaRegistry,
    *,
    progress: Callable[[int, int], None] | None = None,
    catch_up_timeout: float = 60.0,
    batch_size: int = 500,
) -> RebuildReport:
    """Empty ``spec``'s state and replay the archive to it alone.

    ``progress(done, total)`` is called as it goes. Raises RebuildError if
    the listener declares no reset, or if the archive does not catch up with
    what the listener had applied within ``catch_up_timeout`` seconds.
    """
    if spec.reset is None:
        raise RebuildError(
            f"listener {spec.name} declares no 'reset' in listeners.yaml, so it cannot be "
            "rebuilt (a listener that runs commands would run them again)"
        )
    if spec.name == archive.name:
        raise RebuildError("the archive itself cannot be rebuilt")
    snapshot = _reset(spec)
    report = RebuildReport()
    last_id = 0
    deadline = time.monotonic() + catch_up_timeout
    while True:
        total = ArchivedMessage.select().count()
        for row in _rows_after(last_id, batch_size):
            last_id = row.id
            _replay_one(spec, row, registry, report)
            if progress is not None:
                progress(report.replayed, max(total, report.replayed))
        if _covered(snapshot, archive.name):
            if not _rows_after(last_id, 1):
                return report
            continue
        if time.monotonic() > deadline:
            raise RebuildError(
                f"the archive ({archive.name}) did not catch up with what {spec.name} had "
                f"applied within {catch_up_timeout:g} s; is the archive listener running?"
            )
        time.sleep(0.2)  # the archive listener is still receiving what the listener had


def _reset(spec: ListenerSpec) -> _Snapshot:
    assert spec.reset is not None
    State = listener_state
    with outbox.transaction():
        if is_postgres(database.obj):
            # Briefly: no listener writes its bookkeeping while this one resets,
            # so the snapshot and the emptied state agree.
            tables = (State.StreamPosition, State.HeldMessage, State.ProcessedMessage)
            names = ", ".join(qualified_name(model) for model in tables)
            database.execute_sql(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
        positions = {
            stream: int(position)
            for stream, position in State.StreamPosition.select(
                State.StreamPosition.stream, State.StreamPosition.position
            )
            .where(State.StreamPosition.listener == spec.name)
            .tuples()
            .iterator()
        }
        message_ids = {
            str(row[0])
            for row in State.ProcessedMessage.select(State.ProcessedMessage.message_id)
            .where(State.ProcessedMessage.listener == spec.name)
            .tuples()
            .iterator()
        }
        # Held messages were acknowledged to the broker: once deleted here they
        # live on only in the archive, so the replay must wait for them too.
        message_ids |= {
            str(row[0])
            for row in State.HeldMessage.select(State.HeldMessage.message_id)
            .where(State.HeldMessage.listener == spec.name)
            .tuples()
            .iterator()
        }
        for model in (State.StreamPosition, State.HeldMessage, State.ProcessedMessage):
            model.delete().where(model.listener == spec.name).execute()
        spec.reset()
    logger.info(
        "listener %s reset: %d streams and %d other messages to replay",
        spec.name,
        len(positions),
        len(message_ids),
    )
    return _Snapshot(positions=positions, message_ids=message_ids)


def _rows_after(last_id: int, limit: int) -> list[ArchivedMessage]:
    return list(
        ArchivedMessage.select()
        .where(ArchivedMessage.id > last_id)
        .order_by(ArchivedMessage.id)
        .limit(limit)
    )


def _replay_one(
    spec: ListenerSpec, row: ArchivedMessage, registry: SchemaRegistry, report: RebuildReport
) -> None:
    report.replayed += 1
    envelope = envelope_from_record(row)
    routing_key = f"{row.type}.v{row.schema_version}"
    if not spec.accepts(routing_key):
        report.skipped += 1
        return
    try:
        message = message_from_envelope(envelope, registry, spec.reads)
        outcome = apply_message(spec, message, registry)
    except Exception as error:
        report.failed += 1
        dead_letters.store(spec.name, envelope, error, attempts=1, poison=False)
        return
    if outcome == "applied":
        report.applied += 1
    else:
        report.skipped += 1


def _covered(snapshot: _Snapshot, archive_listener: str) -> bool:
    """Has the archive received everything the listener had applied?"""
    State = listener_state
    archived = {
        stream: int(position)
        for stream, position in State.StreamPosition.select(
            State.StreamPosition.stream, State.StreamPosition.position
        )
        .where(
            (State.StreamPosition.listener == archive_listener)
            & State.StreamPosition.stream.in_(list(snapshot.positions) or [""])
        )
        .tuples()
        .iterator()
    }
    if any(archived.get(stream, 0) < position for stream, position in snapshot.positions.items()):
        return False
    if not snapshot.message_ids:
        return True
    found = (
        ArchivedMessage.select()
        .where(ArchivedMessage.message_id.in_(list(snapshot.message_ids)))
        .count()
    )
    return found == len(snapshot.message_ids)
