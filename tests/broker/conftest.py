"""The broker tier: the real RabbitMQ (and PostgreSQL), the service's code in
the test process. Fails, never skips, when RabbitMQ does not answer.

``on_rabbitmq`` builds installations (``tests.support.installation``: a
migrated database, a queue prefix, a listeners.yaml; no process runs) with a
runtime of this process on RabbitMQ: commands run here, the drain is called
directly, and what RabbitMQ holds is read back with pika.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest
from dramatiq.common import dq_name, xq_name

from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.settings import Settings
from tests.support.installation import Installation
from tests.support.services import (
    BROKER_URL,
    Postgres,
    delete_from_broker,
    unique_name,
)

WATCH = "tests.slices.recorders.listeners:watch"
#: The listeners of ``on_rabbitmq``'s installations: each watches what its bindings route to it.
LISTENERS = {
    "everything": ["#"],
    "increases": ["Warehouse.Events.ProductQuantityIncreased.v1"],
    "shipments": ["Warehouse.Events.ProductQuantityShipped.*"],
    "notifications": ["*.*.NotifiedLowProductQuantity.v1"],
    "elsewhere": ["Billing.#"],
}


@pytest.fixture
def queue(rabbitmq: None) -> Iterator[str]:
    """A queue name of this test's own; the queue and Dramatiq's delay and
    dead-letter queues for it are deleted afterwards."""
    name = unique_name("queue")
    yield name
    delete_from_broker([name, dq_name(name), xq_name(name)])


@dataclass
class Delivery:
    routing_key: str
    exchange: str
    properties: pika.BasicProperties
    body: bytes


@dataclass
class OnRabbitmq:
    """An installation, and a runtime of this process on its database and RabbitMQ."""

    installation: Installation
    runtime: Runtime

    @property
    def prefix(self) -> str:
        return self.installation.queue_prefix

    def queue(self, listener: str) -> str:
        return f"{self.prefix}{listener}"

    def take_all(self, listener: str) -> list[Delivery]:
        """Every message in the listener's queue, removing them."""
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            channel = connection.channel()
            deliveries = []
            while True:
                method, properties, body = channel.basic_get(self.queue(listener), auto_ack=True)
                if method is None:
                    return deliveries
                deliveries.append(Delivery(method.routing_key, method.exchange, properties, body))
        finally:
            connection.close()

    def queued(self, listener: str) -> int:
        """Messages in the listener's queue, its delay queue and its dead-letter queue."""
        ready, delayed, dead = self.runtime.broker.get_queue_message_counts(self.queue(listener))
        return ready + delayed + dead


@pytest.fixture
def on_rabbitmq(
    tmp_path: Path, postgres: Postgres, rabbitmq: None
) -> Iterator[Callable[..., OnRabbitmq]]:
    """Builds installations with a runtime on RabbitMQ (``settings``: more of
    its environment, e.g. OUTBOX_BATCH_SIZE); undoes them afterwards."""
    built: list[OnRabbitmq] = []

    def make(**settings: str) -> OnRabbitmq:
        installation = Installation.create(
            postgres,
            tmp_path / f"installation-{len(built)}",
            name="broker",
            listeners=[{"name": n, "handler": WATCH, "bindings": b} for n, b in LISTENERS.items()],
        )
        try:
            runtime = build(Settings.from_env({**installation.env, **settings}))
        except BaseException:
            installation.close()
            raise
        built.append(OnRabbitmq(installation, runtime))
        return built[-1]

    yield make

    for each in built:
        try:
            each.runtime.broker.close()
            each.runtime.database.close()
        finally:
            each.installation.close()
