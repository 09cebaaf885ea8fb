"""The message model shared by commands, the outbox, the drain and listeners."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar


def new_message_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Message:
    """One event: its type, schema version and decoded Avro payload.

    ``id`` is unique and stays the same across redeliveries, so a listener
    can recognise a message it has already applied.

    ``stream`` and ``position`` are optional: a command that stamps them
    (e.g. the SKU and the SKU's version, increasing by one per event in
    commit order) has listeners apply each stream in that order. The outbox
    fills in ``predecessors``: for each routing key, the last position
    before this one in the stream, so a listener bound to some of the
    stream's events knows which earlier ones it must wait for.
    """

    type: str
    schema_version: int
    payload: dict[str, Any]
    id: str = field(default_factory=new_message_id)
    stream: str | None = None
    position: int | None = None
    predecessors: dict[str, int] | None = None
    #: Set when the payload was resolved from another version than it was
    #: written with (the handler reads ``schema_version``).
    written_version: int | None = None
    #: The Avro binary it arrived as, in the version it was written with, when
    #: a listener received it (spares re-encoding it, e.g. to archive it).
    encoded: bytes | None = field(default=None, compare=False, repr=False)
    #: The correlation id of the request that wrote it, when a listener
    #: received it (a batch handler runs commands and logs under it).
    correlation_id: str | None = field(default=None, compare=False, repr=False)

    @property
    def routing_key(self) -> str:
        """The key it was routed by: its type and the version it was written with."""
        return routing_key_for(self.type, self.written_version or self.schema_version)


def routing_key_for(message_type: str, schema_version: int) -> str:
    return f"{message_type}.v{schema_version}"


H = TypeVar("H", bound=Callable[..., Any])


def reads(message_type: str, schema_version: int) -> Callable[[H], H]:
    """Declare that a handler reads ``message_type`` at ``schema_version``.

    Messages of that type written with another version are resolved into it
    (Avro's reader/writer rules) before the handler sees them. Stack one
    decorator per type; types not declared are handed over as written.
    """

    def declare(handler: H) -> H:
        declared = dict(getattr(handler, READS_ATTRIBUTE, {}))
        declared[message_type] = schema_version
        setattr(handler, READS_ATTRIBUTE, declared)
        return handler

    return declare


READS_ATTRIBUTE = "__cqrs_reads__"
BATCH_ATTRIBUTE = "__cqrs_batch__"
ROLLBACK_SAFE_ATTRIBUTE = "__cqrs_rollback_safe__"


def rollback_safe(handler: H) -> H:
    """Declare that all ``handler`` does is undone with its transaction.

    It writes only in the listener's database transaction, and leaves
    anything else (a log line, a call out) to ``outbox.after_commit``. The
    messaging core may then run it before it knows that the message is next
    in its stream: on PostgreSQL the listener's claim goes along with the
    handler's first statement (or the COMMIT) instead of in a round trip of
    its own. A message that turns out not to be next (held, a duplicate, or
    one that held messages wait for) has that transaction undone and is
    applied the usual way, so the handler is called for it again (as after
    any other database error in that transaction). Each message's effect
    stays exactly once; calls to the handler do not.
    Without this declaration a handler is only called once the message is
    known to be next.
    """
    setattr(handler, ROLLBACK_SAFE_ATTRIBUTE, True)
    return handler


def is_rollback_safe(handler: Any) -> bool:
    return bool(getattr(handler, ROLLBACK_SAFE_ATTRIBUTE, False))


B = TypeVar("B", bound=Callable[[list[Message]], Any])


def batch_handler_for(handler: Callable[[Message], Any]) -> Callable[[B], B]:
    """Declare the decorated function the set-based form of ``handler``.

    A listener applies the deliveries it has at hand in one transaction;
    with a batch handler it hands them over in one call, so that the
    handler can write them with one statement per table instead of one per
    message. It receives the messages that are due, in the order ``handler``
    would have been called (each stream's in position order), and must have
    exactly the effect of ``handler`` called on each in turn. Each carries
    its ``correlation_id``; wrap what is done for one message (a command it
    runs, a log line) in ``context.of_message(message)`` to keep the
    message's context. Messages come in the versions ``handler`` declares
    it ``reads``. ``handler`` itself still applies single deliveries,
    retries and held messages.
    """

    def declare(batch: B) -> B:
        setattr(handler, BATCH_ATTRIBUTE, batch)
        return batch

    return declare


def declared_batch_handler(handler: Any) -> Callable[[list[Message]], Any] | None:
    return getattr(handler, BATCH_ATTRIBUTE, None)


def declared_reads(handler: Any) -> dict[str, int]:
    return dict(getattr(handler, READS_ATTRIBUTE, {}))
