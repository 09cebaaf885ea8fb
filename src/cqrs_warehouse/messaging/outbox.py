"""The transactional outbox: commands append messages here, the drain empties it.

Commands (any slice) call ``append`` inside ``transaction()``; the drain
alone claims and deletes rows. Appending outside a transaction is an error:
a message must commit or roll back with the state change that caused it.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import peewee

from .database import BaseModel, database, is_postgres
from .errors import ConfigurationError, NotInTransactionError
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

    class Meta:
        table_name = "messaging_outbox"


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

    def append(self, message: Message) -> None:
        if not database.in_transaction():
            raise NotInTransactionError(
                f"outbox append of {message.type} outside a transaction: wrap the command in "
                "messaging.transaction() so the message commits with its state change"
            )
        data = self.registry.encode(message.type, message.schema_version, message.payload)
        OutboxRecord.insert(
            message_id=message.id,
            type=message.type,
            schema_version=message.schema_version,
            payload=data,
            stream=message.stream,
            position=message.position,
        ).execute()
        self._state.appended = True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A database transaction that wakes the drain if it appended anything."""
        outermost = not database.in_transaction()
        if outermost:
            self._state.appended = False
        with database.atomic():
            yield
            if outermost and self._state.appended and is_postgres(database.obj):
                database.execute_sql("SELECT pg_notify(%s, '')", (self.notify_channel,))
        if outermost and self._state.appended and not is_postgres(database.obj):
            self._wake_drain()

    def _wake_drain(self) -> None:
        if self.nudge is None:
            return
        try:
            self.nudge()
        except Exception:
            # The transaction has committed: the command stands. The periodic
            # sweep publishes what this wake-up would have.
            logger.warning("could not wake the outbox drain; the sweep will", exc_info=True)


_current: Outbox | None = None


def install(outbox: Outbox) -> None:
    """Make ``outbox`` the one that ``append`` and ``transaction`` use (bootstrap does this)."""
    global _current
    _current = outbox


def current() -> Outbox:
    if _current is None:
        raise ConfigurationError("the outbox is not set up: call cqrs_warehouse.bootstrap first")
    return _current


def append(message: Message) -> None:
    """Append ``message`` to the outbox; must run inside a transaction."""
    current().append(message)


@contextmanager
def transaction() -> Iterator[None]:
    """The transaction a command (or a listener) runs in; see Outbox.transaction."""
    with current().transaction():
        yield


def pending_records(limit: int | None = None) -> list[OutboxRecord]:
    query = OutboxRecord.select().order_by(OutboxRecord.id)
    if limit is not None:
        query = query.limit(limit)
    return list(query)


def decode_record(record: OutboxRecord, registry: SchemaRegistry) -> Message:
    return Message(
        id=record.message_id,
        type=record.type,
        schema_version=record.schema_version,
        payload=registry.decode(record.type, record.schema_version, bytes(record.payload)),
        stream=record.stream,
        position=record.position,
    )
