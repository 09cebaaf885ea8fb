"""Applying messages in stream order, exactly once, inside the listener's transaction.

Used by the engine (``engine.py``) only. A message without a stream is
recognised by its id. A message with a stream position is applied only once
the listener has applied every earlier message of its stream that its
bindings receive (the message's ``predecessors`` say which): a position at
or below the last applied is a duplicate; one that must wait is held in the
listener's own table and applied in the same transaction as the message it
waited for.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence

from .. import context
from ..message import Message
from ..outbox import Outbox
from ..routing import ListenerSpec
from ..schemas import SchemaRegistry
from ..storage.positions import Positions, Run

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    HELD = "held"
    UNBOUND = "unbound"  # none of the listener's bindings match: skipped
    RETRIED = "retried"  # failed in a batch: sent back to come again alone
    DEAD_LETTERED = "dead_lettered"
    DROPPED = "dropped"  # could not even be kept as a dead letter: logged at ERROR


#: An outcome, and the position it left the message's stream at (None: not moved).
Result = tuple[Outcome, int | None]


def required_position(spec: ListenerSpec, message: Message) -> int:
    """The last earlier position of the message's stream that ``spec`` receives."""
    return max(
        (last for key, last in (message.predecessors or {}).items() if spec.accepts(key)),
        default=0,
    )


def batch_order(message: Message) -> tuple[bool, str, int]:
    """Sort key of a batch: by stream then position, messages without a stream last."""
    return (message.stream is None, message.stream or "", message.position or 0)


class Ordering:
    def __init__(self, positions: Positions, registry: SchemaRegistry, outbox: Outbox) -> None:
        self.positions = positions
        self.registry = registry
        self.outbox = outbox

    def one(self, spec: ListenerSpec, message: Message) -> Result:
        """Apply one message in the open transaction."""
        if not spec.accepts(message.routing_key):
            logger.warning(
                "listener %s skipped %s (%s): none of its bindings match",
                spec.name,
                message.id,
                message.routing_key,
            )
            return Outcome.UNBOUND, None
        if message.stream is None or message.position is None:
            if not self.positions.mark_applied(spec.name, message.id):
                return Outcome.DUPLICATE, None
            spec.handler.apply(message)
            return Outcome.APPLIED, None
        stream, position = message.stream, message.position
        required = required_position(spec, message)
        held = self.positions.claim(spec.name, stream, position, required)
        if held is None:
            # Not next, or a stream new to this listener: decide on the locked row.
            applied, held = self.positions.lock(spec.name, stream)
            if position <= applied:
                return Outcome.DUPLICATE, None
            if required > applied:
                self._hold(spec, message, required)
                return Outcome.HELD, None
            self.positions.set(spec.name, stream, position, held)
        spec.handler.apply(message)
        applied = position
        if held:
            # (A held copy of this very message is dropped there too.)
            applied, held = self._apply_held_successors(spec, stream, applied, held)
            self.positions.set(spec.name, stream, applied, held)
        return Outcome.APPLIED, applied

    def together(self, spec: ListenerSpec, messages: Sequence[Message]) -> list[Result]:
        """Several messages, sorted by ``batch_order``, in the open transaction.

        The first messages of each stream, as long as each is the next after
        the one before (a run), are claimed for all streams at once and go to
        the handler's ``apply_batch`` in one call. What is left (a stream
        whose run is not next, further messages of a stream, messages without
        a stream) then goes through ``one``, after the run of its stream:
        each stream's messages are still applied in order.
        """
        results: list[Result | None] = [None] * len(messages)
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
                    results[index] = self.one(spec, message)  # logs and skips it
            elif (run := runs.get(stream)) is None:
                runs[stream] = [index]
                first_required[stream] = required_position(spec, message)
            elif required_position(spec, message) == messages[run[-1]].position:
                run.append(index)
            else:
                ended.add(stream)
                alone.append(index)
        claimed = self.positions.claim_runs(
            spec.name,
            [
                Run(
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
                alone.extend(self._cut_before_held_copies(spec, stream, held, messages, runs))
        due = [messages[i] for i in sorted(i for stream in claimed for i in runs[stream])]
        if due:
            spec.handler.apply_batch(due)
        for stream, held in claimed.items():
            run = runs[stream]
            for index in run:
                results[index] = (Outcome.APPLIED, messages[index].position)
            if held:
                position, held = self._apply_held_successors(
                    spec, stream, messages[run[-1]].position or 0, held
                )
                self.positions.set(spec.name, stream, position, held)
                results[run[-1]] = (Outcome.APPLIED, position)
        for index in sorted(alone):
            with context.of_message(messages[index]):
                results[index] = self.one(spec, messages[index])
        done = [result for result in results if result is not None]
        assert len(done) == len(messages), "every message of the batch has an outcome"
        return done

    def _cut_before_held_copies(
        self,
        spec: ListenerSpec,
        stream: str,
        held: int,
        messages: Sequence[Message],
        runs: dict[str, list[int]],
    ) -> list[int]:
        """Cut a claimed run before the first of its messages that the listener
        already holds a copy of (a copy that came earlier, out of order), and
        claim only up to there; returns the indexes cut off, to go one at a time.

        One at a time, the run's first message would release the held copies,
        and the later messages would be duplicates of them. Applied together,
        they would be applied and their held copies dropped: the same effect,
        but other outcomes (metrics, log lines) than without batches.
        """
        run = runs[stream]
        waiting = self.positions.next_held(spec.name, stream)
        if waiting is None:
            return []
        keep = 1
        while keep < len(run) and (messages[run[keep]].position or 0) < waiting.position:
            keep += 1
        if keep == len(run):
            return []
        self.positions.set(spec.name, stream, messages[run[keep - 1]].position or 0, held)
        runs[stream] = run[:keep]
        return run[keep:]

    def _apply_held_successors(
        self, spec: ListenerSpec, stream: str, applied: int, count: int
    ) -> tuple[int, int]:
        """Apply the held messages that ``applied`` unblocks; (position, still held)."""
        while (held := self.positions.next_held(spec.name, stream)) is not None:
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
                    self.outbox.transaction(),  # (what it gave after_commit goes if it fails)
                    context.bound(
                        correlation_id=held.correlation_id,
                        message_id=held.message_id,
                        message_type=held.type,
                    ),
                ):
                    spec.handler.apply(held.to_message(self.registry))
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
        if self.positions.next_held(spec.name, stream) is None:
            count = 0
        return applied, max(count, 0)

    def _hold(self, spec: ListenerSpec, message: Message, required: int) -> None:
        payload = self.registry.encode(message.type, message.schema_version, message.payload)
        self.positions.hold(spec.name, message, required, payload, context.correlation_id.get())
