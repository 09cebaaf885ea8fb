"""The Dramatiq side of the listeners: one actor per listener, the drain actor,
and the middleware that keeps each worker thread's database connection.

Declared by the runtime on the transport's broker. A listener's actor hands
what it receives to ``Engine.apply``: one envelope per delivery, several when
the consumer batched them (``rabbitmq.consumer``). Dramatiq's Retries
middleware retries a raised error with the listener's backoff; the engine
decides when to stop (by dead-lettering), so the actor always asks for a retry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage, Middleware
from dramatiq.middleware.retries import DEFAULT_MAX_BACKOFF

from ..errors import DatabaseUnavailableError
from ..routing import ListenerSpec
from .engine import Engine, Envelope

DRAIN_ACTOR = "drain_outbox"


def declare_listener_actor(
    broker: dramatiq.Broker, spec: ListenerSpec, engine: Engine, *, queue_name: str
) -> dramatiq.Actor:
    min_backoff = max(1, int(spec.retry.min_delay * 1000))
    max_backoff = min(max(1, int(spec.retry.max_delay * 1000)), DEFAULT_MAX_BACKOFF)

    def retry_later(envelope: Envelope, attempt: int) -> None:
        # What Dramatiq's Retries middleware does with a failed message, for
        # one message of a batch: back off, then come again as attempt + 1.
        _, delay = compute_backoff(attempt - 1, factor=min_backoff, max_backoff=max_backoff)
        broker.enqueue(actor.message_with_options(args=(envelope,), retries=attempt), delay=delay)

    def listen(*envelopes: Envelope) -> None:
        engine.apply(spec, envelopes, attempt=_current_attempt(), retry_later=retry_later)

    listen.__name__ = listen.__qualname__ = f"listen_{spec.name}"
    actor: dramatiq.Actor = dramatiq.actor(
        broker=broker,
        actor_name=spec.actor_name,
        queue_name=queue_name,
        retry_when=_always_retry,
        min_backoff=min_backoff,
        max_backoff=max_backoff,
    )(listen)
    return actor


def declare_drain_actor(
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


def send_envelope(broker: dramatiq.Broker, actor_name: str, envelope: Envelope) -> None:
    """Enqueue ``envelope`` for one listener's actor, bypassing the exchange."""
    actor = broker.get_actor(actor_name)
    broker.enqueue(actor.message_with_options(args=(envelope,), message_id=str(envelope["id"])))


def _current_attempt() -> int:
    message = CurrentMessage.get_current_message()
    return 1 + int(message.options.get("retries", 0)) if message is not None else 1


def _always_retry(retries: int, exception: BaseException) -> bool:
    return True


class DatabaseConnections(Middleware):
    """Each thread that processes messages (worker threads, and the consumer
    threads of listener queues, ``rabbitmq.consumer``) keeps a connection
    between messages, drops one the server closed, and forgets one that
    broke, so a worker recovers by itself from a database restart."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self.database.discard_dead_connection()

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if isinstance(exception, DatabaseUnavailableError):
            self.database.discard_broken_connection()

    def after_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        if not self.database.is_closed():
            self.database.close()

    def before_consumer_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        if not self.database.is_closed():
            self.database.close()
