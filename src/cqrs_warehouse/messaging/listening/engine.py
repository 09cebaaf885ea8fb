"""The listener engine: the one way a message is applied to a listener.

The live path (a listener's actor), dead-letter replays, rebuilds and the
tests' ``feed`` all call ``Engine.apply``, so all of them get the same
policy. For each delivery (an envelope):

1. its signature is verified (``signing``): one that no key of MESSAGE_KEY
   signed is dead-lettered at once as untrusted, never decoded, never
   handed over, and moves no stream; messages taken back from the database
   (an archive replayed by a rebuild, a dead letter replayed) were verified
   when they first arrived;
2. it is decoded through the Avro registry; one that does not fit its
   schema or the envelope's limits is a poison message: dead-lettered at
   once, never handed over;
3. it is applied in a transaction that also records what the listener
   applied (``ordering.py``), under its message's logging context;
4. a transient database failure (unavailable, a deadlock) is raised to be
   retried until it passes: it never dead-letters a message;
5. a handler's error is raised to be retried (Dramatiq's backoff) until the
   listener's last attempt, then the message becomes a dead letter (a
   letter that cannot be stored for good is logged at ERROR and dropped:
   no message stops the loop; a database that is away is retried);
6. the outcome is counted (``cqrs_listener_messages_total``) and logged.

Several deliveries go in one transaction (sorted by stream and position);
if a handler fails, that transaction is undone and each is applied on its
own as above, so one failing message neither holds back nor fails the
others: the ones that fail go to ``retry_later``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import context
from ..consistency import Consistency
from ..dead_letters import DeadLetter, DeadLetters
from ..envelope import envelope_from_record, message_from_envelope
from ..errors import (
    RefusedClaimError,
    SchemaError,
    StorageError,
    TransientStorageError,
    UntrustedMessageError,
)
from ..message import Message
from ..metrics import Metrics
from ..outbox import Outbox
from ..routing import ListenerSpec
from ..schemas import SchemaRegistry
from ..signing import MessageKeys
from ..storage.positions import Positions
from .ordering import Ordering, Outcome, batch_order, required_position
from .outcome_lines import log_batch, log_one

logger = logging.getLogger(__name__)

Envelope = dict[str, Any]
#: Sends an envelope that failed in a batch back, alone, as attempt + 1 after a backoff.
RetryLater = Callable[[Envelope, int], None]


class Engine:
    def __init__(
        self,
        *,
        outbox: Outbox,
        positions: Positions,
        registry: SchemaRegistry,
        dead_letters: DeadLetters,
        metrics: Metrics,
        consistency: Consistency,
        keys: MessageKeys,
    ) -> None:
        self.outbox = outbox
        self.keys = keys
        self.database = outbox.database
        self.positions = positions
        self.registry = registry
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.consistency = consistency
        self.ordering = Ordering(positions, registry, outbox)

    def apply(
        self,
        spec: ListenerSpec,
        envelopes: Sequence[Envelope],
        *,
        attempt: int = 1,
        final: bool = False,
        retry_later: RetryLater | None = None,
        verified: bool = False,
    ) -> list[Outcome]:
        """Apply ``envelopes`` to ``spec``'s listener; their outcomes, in order.

        ``attempt`` counts this delivery's attempts; ``final`` makes it the
        last (a failure dead-letters the message instead of raising). Several
        envelopes need ``retry_later`` unless ``final``. ``verified``: taken
        back from the database, their signatures were checked on arrival.
        """
        with self.outbox.tracing.applying(spec.name, envelopes, replayed=verified):
            if len(envelopes) == 1:
                return [self._one(spec, envelopes[0], attempt, final, verified)]
            assert final or retry_later is not None, "a batch needs retry_later unless final"
            return self._batch(spec, envelopes, attempt, final, retry_later, verified)

    def replay(self, spec: ListenerSpec, letter: DeadLetter) -> Outcome:
        """Apply a dead letter to its listener again, now, as its last attempt;
        the letter goes unless it fails again (then it keeps the new error).

        An untrusted letter is verified again, with this process's keys: a
        message refused while the keys were wrong (a rotation gone wrong) is
        applied once they are right; a forged one is refused again."""
        envelope = letter.envelope_dict
        with self.outbox.tracing.applying(spec.name, [envelope], replayed=True):
            outcome = self._one(spec, envelope, letter.attempts + 1, True, not letter.untrusted)
        if outcome not in (Outcome.DEAD_LETTERED, Outcome.DROPPED):
            letter.delete_instance()
        return outcome

    def resend_ready_held(self, send: Callable[[str, Envelope], None], limit: int = 500) -> int:
        """Move held messages that are up next but failed out of the held table and
        back through the broker (``send(listener, envelope)``), where retries and
        dead letters take over. Returns how many."""
        with self.database.atomic():
            ready = self.positions.ready_held(limit)
            for held in ready:
                send(held.listener, envelope_from_record(held))
                self.positions.release(held.listener, held.stream, held.position)
        return len(ready)

    # --- one delivery -----------------------------------------------------

    def _one(
        self, spec: ListenerSpec, envelope: Envelope, attempt: int, final: bool, verified: bool
    ) -> Outcome:
        fields = envelope if isinstance(envelope, dict) else {}
        with context.bound(
            correlation_id=_text(fields.get("correlation_id")),
            message_id=_text(fields.get("id")),
            message_type=_text(fields.get("type")),
            listener=spec.name,
        ):
            try:
                outcome = self._decode_and_apply(spec, envelope, attempt, final, verified)
            except Exception:
                self.metrics.count_outcome(spec.name, "retried")
                raise
            # Committed: let the process's other consumer threads, which may
            # hold a delivery of the same command, go before what is left
            # (docs/decisions/0014-yield-after-commit.md).
            time.sleep(0)
            self.metrics.count_outcome(spec.name, str(outcome))
            log_one(logger, spec.name, outcome, attempt)
        return outcome

    def _decode(self, spec: ListenerSpec, envelope: Envelope, verified: bool) -> Message:
        """The message of ``envelope``, verified unless ``verified`` already;
        raises UntrustedMessageError or SchemaError."""
        if not verified:
            self.keys.verify(envelope)
        return message_from_envelope(envelope, self.registry, spec.reads)

    def _decode_and_apply(
        self, spec: ListenerSpec, envelope: Envelope, attempt: int, final: bool, verified: bool
    ) -> Outcome:
        try:
            message = self._decode(spec, envelope, verified)
        except UntrustedMessageError as error:
            return self._dead_letter(spec, envelope, error, attempt, poison=True, trusted=False)
        except SchemaError as error:
            return self._dead_letter(spec, envelope, error, attempt, poison=True)
        try:
            return self._apply_message(spec, message)
        except TransientStorageError as error:
            logger.warning(
                "listener %s: database error (unavailable, a conflict), will retry: %r",
                spec.name,
                error,
            )
            raise
        except Exception as error:
            if attempt < spec.retry.max_attempts and not final:
                logger.warning(
                    "listener %s: attempt %d of %d failed, will retry: %r",
                    spec.name,
                    attempt,
                    spec.retry.max_attempts,
                    error,
                )
                raise
            return self._dead_letter(spec, envelope, error, attempt, poison=False)

    def _dead_letter(
        self,
        spec: ListenerSpec,
        envelope: Envelope,
        error: Exception,
        attempt: int,
        *,
        poison: bool,
        trusted: bool = True,
    ) -> Outcome:
        """Keep the message as a dead letter. A database that is away is raised
        (retried); any other failure to store it is logged and the message
        dropped, so that no message can stop its listener's loop."""
        try:
            self.dead_letters.store(
                spec.name, envelope, error, attempts=attempt, poison=poison, trusted=trusted
            )
        except TransientStorageError:
            raise
        except Exception as failure:
            logger.error(
                "listener %s: message %s could not be kept as a dead letter (%r); "
                "it is dropped. It failed with: %s",
                spec.name,
                context.message_id.get(),
                failure,
                f"{type(error).__name__}: {error}"[:2000],
                exc_info=True,
            )
            return Outcome.DROPPED
        return Outcome.DEAD_LETTERED

    def _apply_message(self, spec: ListenerSpec, message: Message) -> Outcome:
        if self._may_claim_ahead(spec, message):
            outcome = self._apply_ahead(spec, message)
            if outcome is not None:
                return outcome
        return self._in_transaction(spec, [message])[0]

    def _may_claim_ahead(self, spec: ListenerSpec, message: Message) -> bool:
        """Whether ``message`` may be applied before it is known to be next: its
        handler is rollback-safe, it has a stream position, and the claim can
        go with the handler's first statement (a refusal undoes the whole
        transaction, so not inside another one)."""
        return (
            message.position is not None
            and message.stream is not None
            and spec.handler.rollback_safe
            and self.positions.claims_ahead
            and not self.database.in_transaction()
            and spec.accepts(message.routing_key)
        )

    def _apply_ahead(self, spec: ListenerSpec, message: Message) -> Outcome | None:
        """The claim sent along with the handler's first statement, or with the
        COMMIT if the handler defers all it writes. None if the database refused
        the claim (the message is not next, or held messages wait for it), or
        on any other database error: the transaction is undone and the caller
        applies the message the usual way, handler included."""
        assert message.stream is not None and message.position is not None
        stream, position = message.stream, message.position
        try:
            with self.outbox.transaction(), context.of_message(message):
                self.positions.claim_ahead(
                    spec.name, stream, position, required_position(spec, message)
                )
                spec.handler.apply_ahead(message)
                self.consistency.announce(spec.name, {stream: position}, self.outbox.after_commit)
        except StorageError as error:
            if not isinstance(error, RefusedClaimError):
                # Most likely the refusal still, met by a handler that caught
                # it and went on; the usual way tells whether the error is real.
                logger.info(
                    "listener %s: applying %s ahead of its claim failed (%r); "
                    "applying it the usual way",
                    spec.name,
                    message.id,
                    error,
                )
            return None
        return Outcome.APPLIED

    def _in_transaction(self, spec: ListenerSpec, messages: Sequence[Message]) -> list[Outcome]:
        """Apply ``messages`` (sorted by ``batch_order``) in one transaction; if
        any handler fails, nothing of it is kept (the error is raised)."""
        applied: dict[str, int] = {}  # stream -> the last position applied in it
        with self.outbox.transaction():
            if len(messages) == 1:
                with context.of_message(messages[0]):
                    results = [self.ordering.one(spec, messages[0])]
            else:
                results = self.ordering.together(spec, messages)
            for message, (_, position) in zip(messages, results, strict=True):
                if position is not None and message.stream is not None:
                    applied[message.stream] = max(position, applied.get(message.stream, 0))
            self.consistency.announce(spec.name, applied, self.outbox.after_commit)
        return [outcome for outcome, _ in results]

    # --- a batch of deliveries --------------------------------------------

    def _batch(
        self,
        spec: ListenerSpec,
        envelopes: Sequence[Envelope],
        attempt: int,
        final: bool,
        retry_later: RetryLater | None,
        verified: bool,
    ) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        batch: list[tuple[Message, int]] = []
        for index, envelope in enumerate(envelopes):
            try:
                message = self._decode(spec, envelope, verified)
            except (SchemaError, UntrustedMessageError):
                # (Decoded once more there, and dead-lettered.)
                outcomes[index] = self._one(spec, envelope, attempt, final, verified)
            else:
                batch.append((message, index))
        batch.sort(key=lambda item: batch_order(item[0]))
        try:
            with context.bound(listener=spec.name):
                applied = self._in_transaction(spec, [message for message, _ in batch])
        except TransientStorageError as error:
            # A line per message, as every line about messages names its message.
            for message, _ in batch:
                logger.warning(
                    "listener %s: database error (unavailable, a conflict) in a batch of %d, "
                    "will retry: %r",
                    spec.name,
                    len(batch),
                    error,
                    extra=_fields(spec, message),
                )
            self.metrics.count_outcome(spec.name, "retried", len(batch))
            raise
        except Exception as error:
            for message, _ in batch:
                logger.info(
                    "listener %s: a batch of %d failed (%r); applying this message on its own",
                    spec.name,
                    len(batch),
                    error,
                    extra=_fields(spec, message),
                )
            for _, index in batch:
                try:
                    outcomes[index] = self._one(spec, envelopes[index], attempt, final, True)
                except TransientStorageError:
                    raise
                except Exception:
                    assert retry_later is not None  # (final never raises a handler's error)
                    retry_later(envelopes[index], attempt)
                    outcomes[index] = Outcome.RETRIED
            return [outcomes[i] for i in range(len(envelopes))]
        for (_, index), outcome in zip(batch, applied, strict=True):
            outcomes[index] = outcome
            self.metrics.count_outcome(spec.name, str(outcome))
        log_batch(logger, spec.name, [m for m, _ in batch], applied, attempt)
        return [outcomes[i] for i in range(len(envelopes))]


def _text(value: Any) -> str | None:
    """A field for the logging context; at most 100 characters of it."""
    return value[:100] if isinstance(value, str) else None


def _fields(spec: ListenerSpec, message: Message) -> dict[str, Any]:
    """The context fields of a line about ``message``, as ``context.bound`` would set them."""
    return {
        "correlation_id": message.correlation_id,
        "message_id": message.id,
        "message_type": message.type,
        "listener": spec.name,
    }
