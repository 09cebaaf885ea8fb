"""The event archive: a listener that keeps every message as written, for rebuilds.

Bind ``Archive`` to ``#`` in listeners.yaml and it keeps every message in
``messaging_archive``; ``cqrs-warehouse rebuild`` replays it to a listener
(``listening/rebuild.py``) and ``archive prune`` drops what is older than
an age (a rebuild can only replay what is kept).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

import peewee

from . import context
from .handler import Handler
from .message import Message
from .storage.models import Model, utcnow
from .storage.statements import Bulk


class ArchivedMessage(Model):
    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36, unique=True)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.BlobField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    predecessors = peewee.TextField(null=True)
    correlation_id = peewee.CharField(max_length=64, null=True)
    traceparent = peewee.CharField(max_length=64, null=True)
    tracestate = peewee.CharField(max_length=512, null=True)
    archived_at = peewee.DateTimeField(default=utcnow, index=True)

    class Meta:
        table_name = "messaging_archive"


_COLUMNS: list[peewee.Field] = [
    ArchivedMessage.message_id,
    ArchivedMessage.type,
    ArchivedMessage.schema_version,
    ArchivedMessage.payload,
    ArchivedMessage.stream,
    ArchivedMessage.position,
    ArchivedMessage.predecessors,
    ArchivedMessage.correlation_id,
    ArchivedMessage.traceparent,
    ArchivedMessage.tracestate,
    ArchivedMessage.archived_at,
]
_ARCHIVE_MANY = Bulk(_COLUMNS, lambda insert: insert.on_conflict_ignore())


class Archive(Handler):
    """Keeps each message as it was written (its version, its Avro binary)."""

    rollback_safe = True

    def __init__(self, services: Any) -> None:
        self.registry = services.registry

    def apply(self, message: Message) -> None:
        self.apply_batch([message])

    def apply_batch(self, messages: Sequence[Message]) -> None:
        rows = [self._row(message) for message in messages]
        _ARCHIVE_MANY.run(list(zip(*rows, strict=True)), defer=True)  # nothing reads its result

    def _row(self, message: Message) -> tuple[Any, ...]:
        version = message.written_version or message.schema_version
        payload = message.encoded
        if payload is None:
            payload = self.registry.encode(message.type, version, message.payload)
        return (
            message.id,
            message.type,
            version,
            payload,
            message.stream,
            message.position,
            json.dumps(message.predecessors) if message.predecessors else None,
            message.correlation_id
            if message.correlation_id is not None
            else context.correlation_id.get(),
            message.traceparent,
            message.tracestate,
            utcnow(),
        )


def prune(older_than: datetime.timedelta) -> int:
    """Drop archived messages older than ``older_than``; returns how many."""
    cutoff = utcnow() - older_than
    return int(ArchivedMessage.delete().where(ArchivedMessage.archived_at < cutoff).execute())
