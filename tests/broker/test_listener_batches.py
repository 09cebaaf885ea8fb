"""Listener batches against a real RabbitMQ and PostgreSQL, with a real Dramatiq worker.

The drain publishes a backlog first, so that RabbitMQ has many deliveries
ready when the worker starts: its consumer then hands the listener actor
several at a time (at most LISTENER_BATCH_SIZE), and acks every one of them.

This pins what the listeners' consumer leans on in Dramatiq
(``rabbitmq.consumer``): its private RabbitMQ consumer class, subclassed,
and a never-started ``WorkerThread`` whose ``process_message`` runs a
batch in the consumer thread itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware

from cqrs_warehouse.messaging.envelope import envelope_from_record
from cqrs_warehouse.messaging.listening.actors import send_envelope
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from tests.broker.conftest import OnRabbitmq
from tests.slices.recorders import watched_messages
from tests.support.services import unique_name
from tests.support.waiting import eventually


class Processed(Middleware):
    """Each message of the listener actor: the kind of thread that processed
    it, and how many envelopes it carried."""

    def __init__(self, actor_name: str) -> None:
        self.actor_name = actor_name
        self.seen: list[tuple[str, int]] = []

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        if message.actor_name == self.actor_name:
            self.seen.append((type(threading.current_thread()).__name__, len(message.args)))

    @property
    def counts(self) -> list[int]:
        return [count for _, count in self.seen]


@contextmanager
def worker_on(installation: OnRabbitmq, listener: str) -> Iterator[Processed]:
    """A Dramatiq worker consuming ``listener``'s queue, and what it processed."""
    runtime = installation.runtime
    processed = Processed(runtime.actors.listeners[listener].actor_name)
    runtime.broker.add_middleware(processed)
    worker = dramatiq.Worker(
        runtime.broker, queues={installation.queue(listener)}, worker_threads=2
    )
    worker.start()
    try:
        yield processed
    finally:
        worker.stop(timeout=10_000)


def test_a_worker_applies_ready_deliveries_in_batches_each_once_and_acks_them_all(
    on_rabbitmq: Callable[..., OnRabbitmq],
) -> None:
    installation = on_rabbitmq(LISTENER_BATCH_SIZE="8")
    runtime = installation.runtime
    commands = runtime.services["warehouse"].commands
    skus = [unique_name("sku") for _ in range(5)]
    ids = [commands.increase_product_quantity(sku, n).id for n in range(1, 13) for sku in skus]
    assert runtime.actors.drain.run() == len(ids)
    assert installation.queued("everything") == len(ids)

    with worker_on(installation, "everything") as counts:

        def all_applied() -> None:
            assert len(watched_messages()) == len(ids)

        eventually(all_applied, timeout=30)

    watched = watched_messages()
    assert Counter(m.id for m in watched) == Counter(ids)  # each exactly once
    for sku in skus:  # and each stream in order
        assert [m.position for m in watched if m.stream == sku] == list(range(1, 13))
    assert sum(counts.counts) == len(ids)
    assert max(counts.counts) <= 8
    assert max(counts.counts) > 1, counts.counts  # 60 were ready: some came together
    # Unacknowledged deliveries would be back in the queue once the worker's
    # connections closed.
    assert installation.queued("everything") == 0


def test_the_consumer_thread_applies_its_deliveries_itself_and_dramatiq_messages_go_to_workers(
    on_rabbitmq: Callable[..., OnRabbitmq],
) -> None:
    installation = on_rabbitmq()
    runtime = installation.runtime
    commands = runtime.services["warehouse"].commands
    sku = unique_name("sku")
    ids = [commands.increase_product_quantity(sku, n).id for n in range(1, 6)]
    # The first event again, as a Dramatiq message (how a retry or a resend
    # of a held message arrives): the listener recognises it as a duplicate.
    first = OutboxRecord.get(OutboxRecord.message_id == ids[0])
    resend = runtime.message_keys.signed(envelope_from_record(first))
    assert runtime.actors.drain.run() == len(ids)

    actor = runtime.actors.listeners["everything"]
    with worker_on(installation, "everything") as threads:

        def all_applied() -> None:
            assert len(watched_messages()) == len(ids)

        eventually(all_applied, timeout=30)
        send_envelope(runtime.broker, actor.actor_name, resend)

        def resend_processed() -> None:
            assert ("WorkerThread", 1) in threads.seen

        eventually(resend_processed, timeout=30)

    assert [m.id for m in watched_messages()] == ids  # in order, the resend not again
    deliveries = [count for kind, count in threads.seen if kind == "ConsumerThread"]
    assert sum(deliveries) == len(ids), threads.seen
    assert threads.seen.count(("WorkerThread", 1)) == 1, threads.seen
    assert installation.queued("everything") == 0  # every delivery and the resend acked
