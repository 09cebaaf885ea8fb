"""Dead letters: messages a listener gave up on, kept until an operator acts.

The listener runner stores a dead letter after the last attempt of a failing
handler, or at once for a poison message (one that does not fit its schema).
They live in the database, not in RabbitMQ, so nothing expires them. An
operator replays one (applies it to its listener again, now) or discards it
(the listener moves past it: its stream's later messages are released).
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

import peewee

from . import listener_state, outbox
from .database import BaseModel, database
from .message import Message
from .routing import RoutingConfig
from .schemas import SchemaRegistry

logger = logging.getLogger(__name__)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class DeadLetter(BaseModel):
    id = peewee.BigAutoField()
    listener = peewee.CharField(max_length=100, index=True)
    message_id = peewee.CharField(max_length=36, null=True)
    type = peewee.CharField(max_length=255, null=True)
    schema_version = peewee.IntegerField(null=True)
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    envelope = peewee.TextField()
    error = peewee.TextField()
    attempts = peewee.IntegerField()
    poison = peewee.IntegerField()
    created_at = peewee.DateTimeField(default=_utcnow)

    class Meta:
        table_name = "messaging_dead_letters"
        slice_schema = "messaging"

    @property
    def envelope_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.envelope))


def store(
    listener: str, envelope: dict[str, Any], error: BaseException, *, attempts: int, poison: bool
) -> DeadLetter | None:
    """Keep ``envelope`` as a dead letter of ``listener`` (once per message id)."""

    def field(name: str, kind: type) -> Any:
        value = envelope.get(name) if isinstance(envelope, dict) else None
        return value if isinstance(value, kind) and not isinstance(value, bool) else None

    message_id = field("id", str)
    stream, position = field("stream", str), field("position", int)
    with database.atomic():
        if message_id is not None and (
            DeadLetter.select()
            .where((DeadLetter.listener == listener) & (DeadLetter.message_id == message_id))
            .exists()
        ):
            return None
        letter = DeadLetter.create(
            listener=listener,
            message_id=message_id,
            type=field("type", str),
            schema_version=field("schema_version", int),
            stream=stream,
            position=position,
            envelope=json.dumps(envelope, default=repr),
            error=f"{type(error).__name__}: {error}",
            attempts=attempts,
            poison=int(poison),
        )
        if stream is not None and position is not None:
            # Not held any more: the sweep must not resend it.
            listener_state.release(listener, stream, position)
    logger.error(
        "listener %s dead-lettered message %s (%s) after %d attempt(s): %s",
        listener,
        message_id,
        envelope.get("type") if isinstance(envelope, dict) else None,
        attempts,
        letter.error,
    )
    return letter


def list_letters(listener: str | None = None) -> list[DeadLetter]:
    query = DeadLetter.select().order_by(DeadLetter.id)
    if listener is not None:
        query = query.where(DeadLetter.listener == listener)
    return list(query)


def replay(letter_id: int, routing: RoutingConfig, registry: SchemaRegistry) -> str:
    """Apply a dead letter to its listener again, here and now; returns the outcome.

    Raises what the handler raises (the dead letter then stays).
    """
    from .listeners import apply_message
    from .transport import message_from_envelope

    letter = DeadLetter.get_by_id(letter_id)
    spec = routing.listener(letter.listener)
    message: Message = message_from_envelope(letter.envelope_dict, registry)
    with outbox.transaction():
        outcome = apply_message(spec, message, registry)
        letter.delete_instance()
    return outcome


def discard(letter_id: int) -> None:
    """Drop a dead letter; its listener moves past it in its stream."""
    with database.atomic():
        letter = DeadLetter.get_by_id(letter_id)
        if letter.stream is not None and letter.position is not None:
            applied, held = listener_state.lock_position(letter.listener, letter.stream)
            if applied < letter.position:
                listener_state.set_position(letter.listener, letter.stream, letter.position, held)
        letter.delete_instance()


def counts() -> dict[str, int]:
    """Dead letters kept, per listener."""
    query = DeadLetter.select(DeadLetter.listener, peewee.fn.COUNT(DeadLetter.id)).group_by(
        DeadLetter.listener
    )
    return {str(row[0]): int(row[1]) for row in query.tuples().iterator()}
