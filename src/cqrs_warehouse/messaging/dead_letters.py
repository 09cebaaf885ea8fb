"""Dead letters: messages a listener gave up on, kept until an operator acts.

The listener engine stores a dead letter after the last attempt of a failing
handler, or at once for a poison message (one that does not fit its schema).
They live in the database, not in RabbitMQ, so nothing expires them. An
operator replays one (``Engine.replay``: applied to its listener again, now)
or discards it (the listener moves past it: its stream's later messages are
released).

A message without a valid signature is kept as an *untrusted* letter: with
no stream position (it claimed one without proof: discarding it moves
nothing), and replayed only if a key of the replaying process verifies it.
Every field is fitted to its column and the envelope's text is bounded, so
storing a letter fails only if the database does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import peewee

from .envelope import LIMITS, MAX_PAYLOAD_BYTES
from .storage.models import Model, utcnow
from .storage.positions import Positions

logger = logging.getLogger(__name__)

#: ``DeadLetter.poison``: a handler that kept failing (0), a message that
#: cannot be read (poison), one without a valid signature (untrusted).
FAILED, POISON, UNTRUSTED = 0, 1, 2
#: The longest envelope text kept whole, in characters: more than any
#: envelope within the limits (a payload of MAX_PAYLOAD_BYTES is 4/3 that in
#: base64). A longer one keeps its id and its first CUT_TEXT characters.
MAX_ENVELOPE_TEXT = 3 * MAX_PAYLOAD_BYTES // 2
CUT_TEXT = 4096
#: The longest error text kept.
MAX_ERROR_TEXT = 2000
_MAX_VERSION, _MAX_POSITION = (1 << 31) - 1, (1 << 63) - 1


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

    @property
    def untrusted(self) -> bool:
        return bool(self.poison == UNTRUSTED)


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
        trusted: bool = True,
    ) -> DeadLetter:
        """Keep ``envelope`` as a dead letter of ``listener``: once per message id
        (one kept already takes this error and these attempts). ``trusted``:
        its signature was verified (else it is kept as untrusted)."""
        fields = envelope if isinstance(envelope, dict) else {}

        def text(name: str) -> str | None:
            value = fields.get(name)
            return _fit(value, LIMITS[name]) if isinstance(value, str) else None

        def number(name: str, maximum: int) -> int | None:
            value = fields.get(name)
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= maximum
            return value if ok else None

        raw_id = fields.get("id")
        message_id = _fitted_id(raw_id) if isinstance(raw_id, str) else None
        message_type = text("type")
        stream = text("stream") if trusted else None
        position = number("position", _MAX_POSITION) if trusted else None
        kind = UNTRUSTED if not trusted else POISON if poison else FAILED
        reason = _fit(f"{type(error).__name__}: {error}", MAX_ERROR_TEXT)
        same_trust = (
            (DeadLetter.poison == UNTRUSTED) if not trusted else (DeadLetter.poison != UNTRUSTED)
        )
        with self.database.atomic():
            letter = (
                DeadLetter.get_or_none(
                    (DeadLetter.listener == listener)
                    & (DeadLetter.message_id == message_id)
                    & same_trust
                )
                if message_id is not None
                else None
            )
            if letter is not None:
                letter.error, letter.attempts = reason, attempts
                letter.save()
            else:
                letter = DeadLetter.create(
                    listener=listener,
                    message_id=message_id,
                    type=message_type,
                    schema_version=number("schema_version", _MAX_VERSION),
                    stream=stream,
                    position=position,
                    envelope=_envelope_text(envelope, message_id),
                    error=reason,
                    attempts=attempts,
                    poison=kind,
                )
            if stream is not None and position is not None:
                # Not held any more: the sweep must not resend it.
                self.positions.release(listener, stream, position)
        logger.error(
            "listener %s dead-lettered%s message %s (%s) after %d attempt(s): %s",
            listener,
            "" if trusted else " an untrusted",
            message_id,
            message_type,
            attempts,
            reason,
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


def _fit(value: str, limit: int) -> str:
    """``value`` as a text column of ``limit`` characters keeps it: cut, with a
    final "…" if it was longer; without NULs or unpaired surrogates, which
    PostgreSQL refuses."""
    value = value.encode("utf-8", "replace").decode("utf-8").replace("\0", "\ufffd")
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _fitted_id(message_id: str) -> str:
    """A message id as the 36-character column keeps it; a longer one is cut
    and marked with 8 hex digits of its SHA-256, so different ids stay apart."""
    fitted = _fit(message_id, LIMITS["id"])
    if fitted == message_id:
        return fitted
    digest = hashlib.sha256(message_id.encode("utf-8", "replace")).hexdigest()[:8]
    return f"{fitted[:27]}…{digest}"


def _envelope_text(envelope: Any, message_id: str | None) -> str:
    """The envelope as JSON text, at most MAX_ENVELOPE_TEXT characters: a longer
    one is kept as its (fitted) id and the beginning of its text."""
    try:
        text = json.dumps(envelope, default=repr)
    except (TypeError, ValueError, RecursionError):
        return json.dumps({"id": message_id, "unreadable": type(envelope).__name__})
    if len(text) <= MAX_ENVELOPE_TEXT:
        return text
    return json.dumps({"id": message_id, "cut": text[:CUT_TEXT] + "…"})
