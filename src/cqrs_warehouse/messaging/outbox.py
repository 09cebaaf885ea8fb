"""The transactional outbox: commands append messages in their transaction, the drain empties it.

Any slice's commands call ``Outbox.append`` inside ``Outbox.transaction()``;
appending outside a transaction is an error, since a message must commit or
roll back with the state change that caused it. Listeners run in the same
kind of transaction, so a command a listener runs commits with it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

from .context import correlation_id
from .errors import NotInTransactionError, OutboxError
from .message import Message
from .schemas import SchemaRegistry
from .storage.outbox import OutboxStore
from .tracing import Tracing

logger = logging.getLogger(__name__)


class Outbox:
    """Appends encoded messages, and wakes the drain once a transaction that
    appended commits (where the store does not: ``wake_drain``, which sends
    the drain actor a message; a lost wake-up is caught by the sweep)."""

    def __init__(
        self,
        database: Any,
        store: OutboxStore,
        registry: SchemaRegistry,
        *,
        wake_drain: Callable[[], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.registry = registry
        self.wake_drain = None if store.wakes_drain else wake_drain
        self._state = threading.local()
        self.tracing = tracing or Tracing()

    def append(self, message: Message) -> Message:
        """Store ``message``; returns it as listeners will receive it."""
        if not self.database.in_transaction():
            raise NotInTransactionError(
                f"outbox append of {message.type} outside a transaction: run the command "
                "in Outbox.transaction() so the message commits with its state change"
            )
        payload = self.registry.encode(message.type, message.schema_version, message.payload)
        if message.stream is not None and (message.position is None or message.position < 1):
            raise OutboxError(f"message {message.id} has a stream but no position >= 1")
        with self.tracing.writing(message.routing_key) as trace_context:
            predecessors = self.store.append(message, payload, correlation_id.get(), trace_context)
        self._state.appended = True
        return message if predecessors is None else replace(message, predecessors=predecessors)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A database transaction that wakes the drain if it appended anything
        and, once it has committed, runs what ``after_commit`` was given in it.
        Nested, it is a savepoint: undone, it forgets what ``after_commit`` was
        given within it (which peewee's own after_commit does not)."""
        outermost = not self.database.in_transaction()
        if outermost:
            self._state.appended = False
            self._state.after_commit = []
        callbacks: list[Callable[[], None]] | None = getattr(self._state, "after_commit", None)
        given_before = len(callbacks) if callbacks is not None else 0
        try:
            with self.database.atomic():
                yield
        except BaseException:
            if callbacks is not None:
                del callbacks[given_before:]
            raise
        finally:
            if outermost:
                self._state.after_commit = None
        if not outermost:
            return
        if self._state.appended and self.wake_drain is not None:
            try:
                self.wake_drain()
            except Exception:
                # The transaction has committed: the command stands, and the
                # sweep publishes what this wake-up would have.
                logger.warning("could not wake the outbox drain; the sweep will", exc_info=True)
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                logger.exception("a callback after the commit failed")

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the current transaction has committed (at once
        outside a transaction); never if it rolls back, nor if the savepoint
        of a nested ``transaction()`` it was given in is undone. For what a
        command or a listener does outside the database: a log line, a call
        out. It runs in the context (``messaging.context``) it was given in.
        An error it raises is logged; the commit stands.
        """
        callbacks: list[Callable[[], None]] | None = getattr(self._state, "after_commit", None)
        if callbacks is not None:
            callbacks.append(partial(contextvars.copy_context().run, callback))
        elif self.database.in_transaction():
            raise NotInTransactionError(
                "after_commit inside a transaction that Outbox.transaction() did not "
                "begin: it cannot tell when that one commits"
            )
        else:
            callback()

    def pending(self, limit: int | None = None) -> list[Message]:
        """The messages waiting to be published, oldest first, decoded."""
        return [
            Message(
                id=record.message_id,
                type=record.type,
                schema_version=record.schema_version,
                payload=self.registry.decode(
                    record.type, record.schema_version, bytes(record.payload)
                ),
                stream=record.stream,
                position=record.position,
                predecessors=json.loads(record.predecessors) if record.predecessors else None,
                correlation_id=record.correlation_id,
                traceparent=record.traceparent,
                tracestate=record.tracestate,
            )
            for record in self.store.pending(limit)
        ]

    def status(self) -> tuple[int, float | None]:
        """How many messages wait, and the age in seconds of the oldest."""
        return self.store.status()
