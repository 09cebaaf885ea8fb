"""Dead letters: messages a listener gave up on, kept until an operator acts.

The listener engine stores a dead letter after the last attempt of a failing
handler, or at once for a poison message (one that does not fit its schema).
They live in the database, not in RabbitMQ, so nothing expires them. An
operator replays one (``Engine.replay``: applied to its listener again, now)
or discards it (the listener moves past it: its stream's later messages are
released).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import peewee

from .storage.models import Model, utcnow
from .storage.positions import Positions

logger = logging.getLogger(__name__)


class DeadLetter(Model):
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
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        table_name = "messaging_dead_letters"

    @property
    def envelope_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.envelope))


class DeadLetters:
    def __init__(self, database: Any, positions: Positions) -> None:
        self.database = database
        self.positions = positions

    def store(
        self,
        listener: str,
        envelope: dict[str, Any],
        error: BaseException,
        *,
        attempts: int,
        poison: bool,
    ) -> DeadLetter:
        """Keep ``envelope`` as a dead letter of ``listener``: once per message id
        (one kept already takes this error and these attempts)."""

        def field(name: str, kind: type) -> Any:
            value = envelope.get(name) if isinstance(envelope, dict) else None
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        message_id = field("id", str)
        stream, position = field("stream", str), field("position", int)
        text = f"{type(error).__name__}: {error}"
        with self.database.atomic():
            letter = (
                DeadLetter.get_or_none(
                    (DeadLetter.listener == listener) & (DeadLetter.message_id == message_id)
                )
                if message_id is not None
                else None
            )
            if letter is not None:
                letter.error, letter.attempts = text, attempts
                letter.save()
            else:
                letter = DeadLetter.create(
                    listener=listener,
                    message_id=message_id,
                    type=field("type", str),
                    schema_version=field("schema_version", int),
                    stream=stream,
                    position=position,
                    envelope=json.dumps(envelope, default=repr),
                    error=text,
                    attempts=attempts,
                    poison=int(poison),
                )
            if stream is not None and position is not None:
                # Not held any more: the sweep must not resend it.
                self.positions.release(listener, stream, position)
        logger.error(
            "listener %s dead-lettered message %s (%s) after %d attempt(s): %s",
            listener,
            message_id,
            envelope.get("type") if isinstance(envelope, dict) else None,
            attempts,
            text,
        )
        return letter

    def list(self, listener: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        query = DeadLetter.select().order_by(DeadLetter.id)
        if listener is not None:
            query = query.where(DeadLetter.listener == listener)
        return list(query)

    def get(self, letter_id: int) -> DeadLetter | None:
        return DeadLetter.get_or_none(DeadLetter.id == letter_id)

    def discard(self, letter_id: int) -> None:
        """Drop a dead letter; its listener moves past it in its stream."""
        with self.database.atomic():
            letter = DeadLetter.get_by_id(letter_id)
            if letter.stream is not None and letter.position is not None:
                applied, held = self.positions.lock(letter.listener, letter.stream)
                if applied < letter.position:
                    self.positions.set(letter.listener, letter.stream, letter.position, held)
            letter.delete_instance()

    def counts(self) -> dict[str, int]:
        """Dead letters kept, per listener."""
        query = DeadLetter.select(DeadLetter.listener, peewee.fn.COUNT(DeadLetter.id)).group_by(
            DeadLetter.listener
        )
        return {str(row[0]): int(row[1]) for row in query.tuples().iterator()}
