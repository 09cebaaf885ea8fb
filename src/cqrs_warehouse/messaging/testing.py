"""Test helpers for any slice built on the messaging core. For tests only.

- ``pending_messages()``: the messages a command left in the outbox, decoded.
- ``feed(listener, message)``: hand a message to one listener (or a bare
  handler) through the real Avro round trip and the listener runner, with
  no broker.
- ``eventually(assertion)``: retry an assertion until it passes or a
  deadline expires.
- ``watch``: a listener handler that records every message it receives in
  ``messaging_watched_messages``; bind it to ``#`` in an end-to-end test's
  listeners.yaml and read what was published with ``watched_messages()``.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import peewee

from . import outbox
from .database import BaseModel, apply_slice_schemas, database
from .listeners import Outcome, apply_message
from .message import Message
from .outbox import OutboxRecord, decode_record
from .routing import ListenerSpec
from .schemas import SchemaRegistry
from .transport import envelope_from_record, message_from_envelope

T = TypeVar("T")


def pending_messages() -> list[Message]:
    """The messages waiting in the outbox, oldest first, decoded through their schemas."""
    registry = outbox.current().registry
    return [decode_record(record, registry) for record in outbox.pending_records()]


def clear_outbox() -> None:
    OutboxRecord.delete().execute()


def round_trip(
    message: Message,
    registry: SchemaRegistry | None = None,
    reads: dict[str, int] | None = None,
) -> Message:
    """``message`` as a listener receives it: encoded, enveloped, decoded and
    validated, and resolved into the versions in ``reads``."""
    registry = registry or outbox.current().registry
    record = OutboxRecord(
        message_id=message.id,
        type=message.type,
        schema_version=message.schema_version,
        payload=registry.encode(message.type, message.schema_version, message.payload),
        stream=message.stream,
        position=message.position,
        predecessors=None if message.predecessors is None else json.dumps(message.predecessors),
    )
    return message_from_envelope(envelope_from_record(record), registry, reads)


def feed(
    listener: ListenerSpec | Callable[[Message], Any],
    message: Message,
    registry: SchemaRegistry | None = None,
) -> bool:
    """Apply ``message`` to one listener as its actor would.

    True if it was applied now; False if it was skipped (a duplicate, not
    bound) or held until its predecessor in its stream is applied.
    """
    if not isinstance(listener, ListenerSpec):
        name = f"{listener.__module__}:{listener.__qualname__}"[-100:]
        listener = ListenerSpec(name=name, handler_path="", handler=listener, bindings=("#",))
    received = round_trip(message, registry, listener.reads)
    return apply_message(listener, received, registry) == Outcome.APPLIED


def eventually(assertion: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.05) -> T:
    """Call ``assertion`` until it stops raising AssertionError; re-raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return assertion()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


class WatchedMessage(BaseModel):
    """Every message the ``watch`` listener received. Only for tests."""

    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.TextField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    predecessors = peewee.TextField(null=True)
    received_at = peewee.DateTimeField(
        default=lambda: datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    )

    class Meta:
        table_name = "messaging_watched_messages"
        slice_schema = "messaging"


def create_watcher_table() -> None:
    apply_slice_schemas(database.obj)
    WatchedMessage.create_table(safe=True)


def watch(message: Message) -> None:
    WatchedMessage.create(
        message_id=message.id,
        type=message.type,
        schema_version=message.schema_version,
        payload=json.dumps(message.payload, sort_keys=True),
        stream=message.stream,
        position=message.position,
        predecessors=None if message.predecessors is None else json.dumps(message.predecessors),
    )


def watched_messages(message_type: str | None = None) -> list[Message]:
    query = WatchedMessage.select().order_by(WatchedMessage.id)
    if message_type is not None:
        query = query.where(WatchedMessage.type == message_type)
    return [
        Message(
            id=row.message_id,
            type=row.type,
            schema_version=row.schema_version,
            payload=json.loads(row.payload),
            stream=row.stream,
            position=row.position,
            predecessors=None if row.predecessors is None else json.loads(row.predecessors),
        )
        for row in query
    ]
