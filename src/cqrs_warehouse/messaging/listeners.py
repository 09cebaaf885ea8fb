"""One Dramatiq actor per listener in listeners.yaml, plus the drain actor.

Used by bootstrap. For each message a listener actor:

1. decodes it through the Avro registry; a message that does not fit its
   schema is a poison message: dead-lettered at once, never handed over;
2. skips it if none of the listener's bindings match (a stale binding);
3. runs the handler inside a transaction that also records what it applied:
   a message without a stream is recognised by its id; a message with a
   stream position is applied only once the listener has applied every
   earlier message of its stream that its bindings receive (the message's
   ``predecessors`` say which): a position at or below the last applied is
   a duplicate, one that must wait is held in the listener's own table and
   applied in the same transaction as the message it waited for;
4. on a handler error, lets Dramatiq retry it with exponential backoff and,
   after the listener's last attempt, stores it as a dead letter. Database
   connection errors are the infrastructure's, not the message's: they are
   retried until the database is back, and never dead-letter a message.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import peewee
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

from . import consistency, context, dead_letters, listener_state, metrics, outbox
from .database import DeferredBeginPostgresqlDatabase, database
from .errors import SchemaError
from .message import Message, declared_batch_handler, is_rollback_safe
from .routing import ListenerSpec
from .schemas import SchemaRegistry
from .transport import message_from_envelope

logger = logging.getLogger(__name__)

DRAIN_ACTOR = "drain_outbox"
CONNECTION_ERRORS = (peewee.OperationalError, peewee.InterfaceError)


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    HELD = "held"
    UNBOUND = "unbound"


_announce_channel: str | None = None
_announced: frozenset[str] = frozenset()


def announce_applied(channel: str, listeners: set[str]) -> None:
    """Have ``listeners`` NOTIFY ``channel`` with each position they apply.

    Readers waiting on a consistency token listen there (PostgreSQL); only
    the listeners someone reads from pay for the notification.
    """
    global _announce_channel, _announced
    _announce_channel, _announced = channel, frozenset(listeners)


def apply_message(
    spec: ListenerSpec, message: Message, registry: SchemaRegistry | None = None
) -> Outcome:
    """Run ``spec``'s handler on ``message`` exactly once, in stream order."""
    if _claims_ahead(spec, message):
        outcome = _apply_claiming_ahead(spec, message)
        if outcome is not None:
            return outcome
    return apply_messages(spec, [message], registry)[0]


_ahead: contextvars.ContextVar[bool] = contextvars.ContextVar("claiming_ahead", default=False)


def claiming_ahead() -> bool:
    """Whether the handler now runs ahead of its message's claim (see
    ``message.rollback_safe``): on PostgreSQL, in a transaction that is
    undone, and the message applied again the usual way, if PostgreSQL
    refuses it. A handler may then bet on the common case instead of reading
    what decides: a statement that calls ``"messaging".expect(condition,
    what)`` refuses the transaction where the condition does not hold (the
    notifier bets that a shipment leaves more than its threshold).
    """
    return _ahead.get()


def _claims_ahead(spec: ListenerSpec, message: Message) -> bool:
    """Whether ``message`` may be handled before it is known to be next: its
    handler is ``rollback_safe``, it has a stream position, and the claim can
    go with the handler's first statement (PostgreSQL, outside any other
    transaction: a refusal undoes the whole transaction)."""
    return (
        message.position is not None
        and message.stream is not None
        and is_rollback_safe(spec.handler)
        and isinstance(database.obj, DeferredBeginPostgresqlDatabase)
        and not database.in_transaction()
        and spec.accepts(message.routing_key)
    )


def _apply_claiming_ahead(spec: ListenerSpec, message: Message) -> Outcome | None:
    """``apply_message`` in one round trip fewer: the claim is sent along with
    the handler's first statement, or with the COMMIT if the handler defers
    all it writes (then the whole transaction is one round trip). None if
    PostgreSQL refused the claim (the message is not next, or held messages
    wait for it), or on any other database error: the transaction is undone
    and the caller applies the message the usual way, handler included.

    The usual way sends the claim first and waits for its answer; a message
    is next in nearly every case, and a ``rollback_safe`` handler does
    nothing that its transaction's rollback would not undo.
    """
    assert message.stream is not None and message.position is not None
    stream, position = message.stream, message.position
    ahead = _ahead.set(True)
    try:
        with outbox.transaction(), context.of_message(message):
            listener_state.claim_ahead(
                spec.name, stream, position, required_position(spec, message)
            )
            spec.handler(message)
            if _announce_channel is not None and spec.name in _announced:
                consistency.notify_applied(_announce_channel, spec.name, stream, position)
    except peewee.DatabaseError as error:
        if not listener_state.refused_claim(error):
            # Most likely the refusal still, met by a handler that caught it
            # and went on (then its next statement, or the COMMIT, fails
            # instead). The usual way tells: the error stands if it is real.
            logger.info(
                "listener %s: applying %s ahead of its claim failed (%r); "
                "applying it the usual way",
                spec.name,
                message.id,
                error,
            )
        return None
    finally:
        _ahead.reset(ahead)
    consistency.signal_applied(spec.name, stream, position)
    return Outcome.APPLIED


def apply_messages(
    spec: ListenerSpec, messages: list[Message], registry: SchemaRegistry | None = None
) -> list[Outcome]:
    """``apply_message`` for each of ``messages``, in one transaction.

    If any handler fails, nothing of the batch is kept (the error is raised).
    The caller orders the messages: by stream, then position (see
    ``batch_order``). Each is applied (and logs) under the correlation id
    it carries, if any. Of several messages, the ones that are next in
    their stream are claimed together and go to the listener's batch
    handler, if it declares one (``message.batch_handler_for``), in one call.
    """
    registry = registry or outbox.current().registry
    applied: dict[str, int] = {}  # stream -> the last position applied in it
    with outbox.transaction():
        if len(messages) == 1:
            with context.of_message(messages[0]):
                results = [_apply(spec, messages[0], registry)]
        else:
            results = _apply_together(spec, messages, registry)
        for message, (_, position) in zip(messages, results, strict=True):
            if position is not None and message.stream is not None:
                applied[message.stream] = max(position, applied.get(message.stream, 0))
        if _announce_channel is not None and spec.name in _announced:
            for stream, position in applied.items():
                consistency.notify_applied(_announce_channel, spec.name, stream, position)
    for stream, position in applied.items():
        consistency.signal_applied(spec.name, stream, position)
    return [outcome for outcome, _ in results]


def batch_order(message: Message) -> tuple[bool, str, int]:
    """Sort key of a batch: by stream then position, messages without a stream last."""
    return (message.stream is None, message.stream or "", message.position or 0)


def _apply(
    spec: ListenerSpec, message: Message, registry: SchemaRegistry
) -> tuple[Outcome, int | None]:
    """One message, inside the listener's transaction: (outcome, position applied)."""
    if not spec.accepts(message.routing_key):
        logger.warning(
            "listener %s skipped %s (%s): none of its bindings match",
            spec.name,
            message.id,
            message.routing_key,
        )
        return Outcome.UNBOUND, None
    if message.stream is None or message.position is None:
        if not listener_state.first_time(spec.name, message.id):
            return Outcome.DUPLICATE, None
        spec.handler(message)
        return Outcome.APPLIED, None
    stream, position = message.stream, message.position
    required = required_position(spec, message)
    held = listener_state.claim(spec.name, stream, position, required)
    if held is None:
        # Not next, or a stream new to this listener: decide on the locked row.
        applied, held = listener_state.lock_position(spec.name, stream)
        if position <= applied:
            return Outcome.DUPLICATE, None
        if required > applied:
            listener_state.hold(spec.name, message, required, registry)
            return Outcome.HELD, None
        listener_state.set_position(spec.name, stream, position, held)
    spec.handler(message)
    applied = position
    if held:
        # (A held copy of this very message is dropped there too.)
        applied, held = _apply_held_successors(spec, stream, applied, held, registry)
        listener_state.set_position(spec.name, stream, applied, held)
    return Outcome.APPLIED, applied


def _apply_together(
    spec: ListenerSpec, messages: list[Message], registry: SchemaRegistry
) -> list[tuple[Outcome, int | None]]:
    """Several messages in the listener's transaction: (outcome, position applied) each.

    The first messages of each stream, as long as each is the next after
    the one before (a run), are claimed for all streams at once
    (``listener_state.claim_runs``) and handled together. What is left (a
    stream whose run is not next, further messages of a stream, messages
    without a stream) then goes through ``_apply`` one at a time, after the
    run of its stream: each stream's messages are still applied in order.
    """
    results: list[tuple[Outcome, int | None] | None] = [None] * len(messages)
    runs: dict[str, list[int]] = {}  # stream -> indexes of its run's messages
    first_required: dict[str, int] = {}
    ended: set[str] = set()  # streams whose run has ended
    alone: list[int] = []  # indexes of messages to apply one at a time
    for index, message in enumerate(messages):
        stream = message.stream
        if stream is None or message.position is None or stream in ended:
            alone.append(index)
        elif not spec.accepts(message.routing_key):
            with context.of_message(message):
                results[index] = _apply(spec, message, registry)  # logs and skips it
        elif (run := runs.get(stream)) is None:
            runs[stream] = [index]
            first_required[stream] = required_position(spec, message)
        elif required_position(spec, message) == messages[run[-1]].position:
            run.append(index)
        else:
            ended.add(stream)
            alone.append(index)
    claimed = listener_state.claim_runs(
        spec.name,
        [
            listener_state.Run(
                stream,
                first_required[stream],
                messages[run[0]].position or 0,
                messages[run[-1]].position or 0,
            )
            for stream, run in runs.items()
        ],
    )
    for stream, run in runs.items():
        if stream not in claimed:
            alone.extend(run)
    for stream, held in claimed.items():
        if held and len(runs[stream]) > 1:
            alone.extend(_before_held_copies(spec, stream, held, messages, runs))
    _handle_together(spec, [messages[i] for i in sorted(i for s in claimed for i in runs[s])])
    for stream, held in claimed.items():
        run = runs[stream]
        for index in run:
            results[index] = (Outcome.APPLIED, messages[index].position)
        if held:
            position, held = _apply_held_successors(
                spec, stream, messages[run[-1]].position or 0, held, registry
            )
            listener_state.set_position(spec.name, stream, position, held)
            results[run[-1]] = (Outcome.APPLIED, position)
    for index in sorted(alone):
        with context.of_message(messages[index]):
            results[index] = _apply(spec, messages[index], registry)
    done = [result for result in results if result is not None]
    assert len(done) == len(messages), "every message of the batch has an outcome"
    return done


def _before_held_copies(
    spec: ListenerSpec,
    stream: str,
    held: int,
    messages: list[Message],
    runs: dict[str, list[int]],
) -> list[int]:
    """Cut a claimed run before the first of its messages that the listener
    already holds a copy of (a copy that came earlier, out of order), and
    claim only up to there; returns the indexes cut off, to go one at a time.

    One at a time, the run's first message would release the held copies,
    and the later messages would be duplicates of them. Applied together,
    they would be applied and their held copies dropped: the same effect,
    but other outcomes (``cqrs_listener_messages_total``, the log lines)
    than without batches. Cut, they are the same.
    """
    run = runs[stream]
    waiting = listener_state.next_held(spec.name, stream)
    if waiting is None:
        return []
    keep = 1
    while keep < len(run) and (messages[run[keep]].position or 0) < waiting.position:
        keep += 1
    if keep == len(run):
        return []
    listener_state.set_position(spec.name, stream, messages[run[keep - 1]].position or 0, held)
    runs[stream] = run[:keep]
    return run[keep:]


def _handle_together(spec: ListenerSpec, messages: list[Message]) -> None:
    if not messages:
        return
    batch_handler = declared_batch_handler(spec.handler)
    if batch_handler is not None:
        batch_handler(messages)
        return
    for message in messages:
        with context.of_message(message):
            spec.handler(message)


def required_position(spec: ListenerSpec, message: Message) -> int:
    """The last earlier position of the message's stream that ``spec`` receives."""
    return max(
        (last for key, last in (message.predecessors or {}).items() if spec.accepts(key)),
        default=0,
    )


def _apply_held_successors(
    spec: ListenerSpec, stream: str, applied: int, count: int, registry: SchemaRegistry
) -> tuple[int, int]:
    """Apply the held messages that ``applied`` unblocks; (position, still held)."""
    while (held := listener_state.next_held(spec.name, stream)) is not None:
        if held.position <= applied:  # a duplicate held before its twin was applied
            held.delete_instance()
            count -= 1
            continue
        if held.required > applied:
            break
        try:
            # A savepoint: a failing successor must not undo its predecessor.
            # It runs, and logs, under its own request's correlation id.
            with (
                outbox.transaction(),  # (what it gave after_commit goes if it fails)
                context.bound(
                    correlation_id=held.correlation_id,
                    message_id=held.message_id,
                    message_type=held.type,
                ),
            ):
                spec.handler(held.to_message(registry))
        except Exception:
            # It stays held; the sweep sends it back through the broker,
            # where it is retried and dead-lettered like any message.
            logger.warning(
                "listener %s: held message %s failed; it will be retried",
                spec.name,
                held.message_id,
                exc_info=True,
            )
            break
        held.delete_instance()
        count -= 1
        applied = held.position
    if listener_state.next_held(spec.name, stream) is None:
        count = 0
    return applied, max(count, 0)


def listener_actor_name(spec: ListenerSpec) -> str:
    return f"listener.{spec.name}"


def _current_attempt() -> int:
    message = CurrentMessage.get_current_message()
    return 1 + int(message.options.get("retries", 0)) if message is not None else 1


def _always_retry(retries: int, exception: BaseException) -> bool:
    # The actor itself stops retrying (by dead-lettering); what reaches
    # Dramatiq's Retries middleware is always to be retried.
    return True


def run_listener(
    spec: ListenerSpec,
    envelope: dict[str, Any],
    registry: SchemaRegistry,
    *,
    attempt: int,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome | None:
    """What a listener actor does with one delivery; None if it was dead-lettered."""
    fields = envelope if isinstance(envelope, dict) else {}
    with context.bound(
        correlation_id=_text(fields.get("correlation_id")),
        message_id=_text(fields.get("id")),
        message_type=_text(fields.get("type")),
        listener=spec.name,
    ):
        try:
            outcome = _run_listener(spec, envelope, registry, attempt=attempt)
        except Exception:
            metrics.count_listener_outcome(spec.name, "retried")
            raise
        # Committed: what is left (the metrics, the log line, Dramatiq's
        # middleware, the ack) is on no message's way to its listeners, but
        # holds the interpreter that the process's other consumer threads
        # wait for, each with a delivery of the same command in hand. Let them
        # go first (measured at 100 commands/s: the slowest listener's p50
        # 3.3 ms against 3.8 without, medians of 3 runs each).
        time.sleep(0)
        metrics.count_listener_outcome(spec.name, str(outcome or "dead_lettered"))
        logger.info("listener %s: %s (attempt %d)", spec.name, outcome or "dead-lettered", attempt)
    if on_done is not None:
        on_done(envelope)
    return outcome


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _run_listener(
    spec: ListenerSpec, envelope: dict[str, Any], registry: SchemaRegistry, *, attempt: int
) -> Outcome | None:
    try:
        message = message_from_envelope(envelope, registry, spec.reads)
    except SchemaError as error:
        dead_letters.store(spec.name, envelope, error, attempts=attempt, poison=True)
        outcome = None
    else:
        try:
            outcome = apply_message(spec, message, registry)
        except CONNECTION_ERRORS as error:
            logger.warning(
                "listener %s: database error (unavailable, deadlock), will retry: %r",
                spec.name,
                error,
            )
            raise
        except Exception as error:
            if attempt < spec.retry.max_attempts:
                logger.warning(
                    "listener %s: attempt %d of %d failed, will retry: %r",
                    spec.name,
                    attempt,
                    spec.retry.max_attempts,
                    error,
                )
                raise
            dead_letters.store(spec.name, envelope, error, attempts=attempt, poison=False)
            outcome = None
    return outcome


def run_listener_batch(
    spec: ListenerSpec,
    envelopes: tuple[dict[str, Any], ...],
    registry: SchemaRegistry,
    *,
    attempt: int,
    retry_later: Callable[[dict[str, Any], int], None],
) -> None:
    """What a listener actor does with several deliveries at once (see broker.py).

    They are applied in one transaction, in stream order. If a handler fails,
    the transaction is undone and each message is applied on its own as
    ``run_listener`` would, so that one failing message neither holds back
    nor fails the others: the ones that fail go to ``retry_later(envelope,
    attempt)``, to come back alone after a backoff, and are dead-lettered
    after the listener's last attempt like any message. A database
    connection error fails the whole batch, which Dramatiq retries (the
    messages applied meanwhile are then recognised as duplicates).
    """
    batch: list[tuple[Message, dict[str, Any]]] = []
    for envelope in envelopes:
        try:
            batch.append((message_from_envelope(envelope, registry, spec.reads), envelope))
        except SchemaError:
            run_listener(spec, envelope, registry, attempt=attempt)  # dead-letters it
    batch.sort(key=lambda item: batch_order(item[0]))
    try:
        with context.bound(listener=spec.name):
            outcomes = apply_messages(spec, [message for message, _ in batch], registry)
    except CONNECTION_ERRORS as error:
        # A line per message, as every line about messages names its message.
        for message, _ in batch:
            logger.warning(
                "listener %s: database error (unavailable, deadlock) in a batch of %d, "
                "will retry: %r",
                spec.name,
                len(batch),
                error,
                extra=_fields(spec, message),
            )
        metrics.count_listener_outcome(spec.name, "retried", len(batch))
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
        for _, envelope in batch:
            try:
                run_listener(spec, envelope, registry, attempt=attempt)
            except CONNECTION_ERRORS:
                raise
            except Exception:
                retry_later(envelope, attempt)
        return
    for (message, _), outcome in zip(batch, outcomes, strict=True):
        metrics.count_listener_outcome(spec.name, str(outcome))
        logger.info(
            "listener %s: %s (attempt %d)",
            spec.name,
            outcome,
            attempt,
            extra=_fields(spec, message),
        )


def _fields(spec: ListenerSpec, message: Message) -> dict[str, Any]:
    """The context fields of a line about ``message``, as ``context.bound`` would set them."""
    return {
        "correlation_id": message.correlation_id,
        "message_id": message.id,
        "message_type": message.type,
        "listener": spec.name,
    }


def build_listener_actor(
    broker: dramatiq.Broker,
    spec: ListenerSpec,
    *,
    queue_name: str,
    registry: SchemaRegistry,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> dramatiq.Actor:
    min_backoff = max(1, int(spec.retry.min_delay * 1000))
    max_backoff = min(max(1, int(spec.retry.max_delay * 1000)), DEFAULT_MAX_BACKOFF)

    def retry_later(envelope: dict[str, Any], attempt: int) -> None:
        # What Dramatiq's Retries middleware does with a failed message, for
        # one message of a batch: back off, then come again as attempt + 1.
        _, delay = compute_backoff(attempt - 1, factor=min_backoff, max_backoff=max_backoff)
        broker.enqueue(actor.message_with_options(args=(envelope,), retries=attempt), delay=delay)

    def run(*envelopes: dict[str, Any]) -> None:
        # One envelope per delivery; several when the consumer batched them.
        if len(envelopes) == 1:
            run_listener(spec, envelopes[0], registry, attempt=_current_attempt(), on_done=on_done)
        else:
            run_listener_batch(
                spec, envelopes, registry, attempt=_current_attempt(), retry_later=retry_later
            )

    run.__name__ = run.__qualname__ = f"listen_{spec.name}"
    actor: dramatiq.Actor = dramatiq.actor(
        broker=broker,
        actor_name=listener_actor_name(spec),
        queue_name=queue_name,
        retry_when=_always_retry,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
    )(run)
    return actor


def build_drain_actor(
    broker: dramatiq.Broker, run_drain: Callable[[], int], *, queue_name: str
) -> dramatiq.Actor:
    def drain_outbox() -> None:
        run_drain()

    return dramatiq.actor(
        broker=broker,
        actor_name=DRAIN_ACTOR,
        queue_name=queue_name,
        # The rows stay in the outbox when a drain fails; the next wake-up or
        # sweep publishes them, so a short retry is all this needs.
        max_retries=2,
        min_backoff=200,
        max_backoff=2000,
    )(drain_outbox)


def resend_ready_held(send: Callable[[str, dict[str, Any]], None], limit: int = 500) -> int:
    """Move held messages that are up next but failed out of the held table and
    back through the broker (``send(listener, envelope)``), where retries and
    dead letters take over. Returns how many."""
    from .transport import envelope_from_record

    with database.atomic():
        ready = listener_state.ready_held(limit)
        for held in ready:
            send(held.listener, envelope_from_record(held))
            listener_state.release(held.listener, held.stream, held.position)
    return len(ready)
