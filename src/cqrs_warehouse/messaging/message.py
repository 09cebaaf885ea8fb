"""The message: what commands emit, the outbox stores and listeners apply. Anyone may use it."""

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
    #: received it (a handler's batch form runs commands and logs under it).
    correlation_id: str | None = field(default=None, compare=False, repr=False)
    #: The W3C trace context it travels with (``tracing``), when a listener received it.
    traceparent: str | None = field(default=None, compare=False, repr=False)
    tracestate: str | None = field(default=None, compare=False, repr=False)

    @property
    def routing_key(self) -> str:
        """The key it was routed by: its type and the version it was written with."""
        return routing_key_for(self.type, self.written_version or self.schema_version)


def routing_key_for(message_type: str, schema_version: int) -> str:
    return f"{message_type}.v{schema_version}"


H = TypeVar("H", bound=Callable[..., Any])

#: Where ``reads`` keeps what a function handler reads.
READS_ATTRIBUTE = "__cqrs_reads__"


def reads(message_type: str, schema_version: int) -> Callable[[H], H]:
    """Declare that a function handler reads ``message_type`` at ``schema_version``
    (a ``Handler`` class says so in its ``reads``).

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
