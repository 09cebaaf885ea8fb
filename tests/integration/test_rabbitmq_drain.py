"""The outbox drain against a real PostgreSQL and a real RabbitMQ, in-process.

Commands run here, the drain is called directly, and what RabbitMQ holds in
each listener queue is read back with pika. No workers consume, so a queue
holds exactly what was routed to it.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dramatiq
import dramatiq.broker
import fastavro
import pika
import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.bootstrap import Runtime, bootstrap
from cqrs_warehouse.messaging import outbox as outbox_module
from cqrs_warehouse.messaging.database import database, open_database
from cqrs_warehouse.messaging.errors import PublishError
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.settings import Settings
from cqrs_warehouse.warehouse.commands import (
    increase_product_quantity,
    notify_low_product_quantity,
    ship_product_quantity,
)
from tests.conftest import BROKER_URL, SCHEMAS, PostgresDatabases, unique_name
from tests.e2e.harness import (
    EXCHANGE,
    delete_rabbitmq_topology,
    free_port,
    require_rabbitmq,
    write_listeners_config,
)

WATCH = "cqrs_warehouse.messaging.testing:watch"
LISTENERS = {
    "everything": ["#"],
    "increases": ["Warehouse.Events.ProductQuantityIncreased.v1"],
    "shipments": ["Warehouse.Events.ProductQuantityShipped.*"],
    "notifications": ["*.*.NotifiedLowProductQuantity.v1"],
    "elsewhere": ["Billing.#"],
}


@dataclass
class Delivery:
    routing_key: str
    exchange: str
    properties: pika.BasicProperties
    body: bytes


@dataclass
class Installation:
    runtime: Runtime
    prefix: str

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
        ready, delayed, dead = self.runtime.broker.get_queue_message_counts(self.queue(listener))
        return ready + delayed + dead


@pytest.fixture
def installations(
    tmp_path: Path, postgres_databases: PostgresDatabases
) -> Iterator[Callable[..., Installation]]:
    """Builds runtimes on fresh databases and queue prefixes; undoes them afterwards."""
    require_rabbitmq()
    saved_broker = dramatiq.broker.global_broker
    saved_outbox = outbox_module._current
    built: list[Installation] = []

    def build(*, broker_url: str = BROKER_URL, batch_size: int = 500) -> Installation:
        url = postgres_databases.create()
        db = open_database(url)
        migrations.migrate(db)
        db.close()
        prefix = unique_name("it") + "."
        config = write_listeners_config(
            tmp_path / f"{prefix}yaml",
            [{"name": name, "handler": WATCH, "bindings": b} for name, b in LISTENERS.items()],
        )
        runtime = bootstrap(
            Settings(
                database_url=url,
                broker_url=broker_url,
                listeners_config=str(config),
                schemas_dir=str(SCHEMAS),
                queue_prefix=prefix,
                drain_batch_size=batch_size,
            )
        )
        built.append(Installation(runtime, prefix))
        return built[-1]

    yield build

    for installation in built:
        close_publisher(installation.runtime)
        installation.runtime.broker.close()
        installation.runtime.database.close()
        delete_rabbitmq_topology(installation.prefix, LISTENERS, exchange=EXCHANGE)
    dramatiq.broker.global_broker = saved_broker
    outbox_module._current = saved_outbox


def close_publisher(runtime: Runtime) -> None:
    """Close the publisher's connection of the calling thread, if it opened one."""
    reset = getattr(runtime.drain.publisher, "_reset", None)
    if reset is not None:
        reset()


def outbox_ids() -> list[str]:
    return [r.message_id for r in OutboxRecord.select().order_by(OutboxRecord.id)]


def avro_binary(message: Message) -> bytes:
    """The plain Avro binary of ``message``'s payload, written with fastavro directly."""
    folders = message.type.split(".")
    path = SCHEMAS.joinpath(*folders[:-1], f"{folders[-1]}_v{message.schema_version}.avsc")
    schema = fastavro.parse_schema(json.loads(path.read_text(encoding="utf-8")))
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, message.payload)
    return buffer.getvalue()


def run_commands(sku: str) -> list[Message]:
    return [
        increase_product_quantity(sku, 10),
        ship_product_quantity(sku, 4),
        notify_low_product_quantity(sku, 6),
    ]


def test_a_drain_publishes_each_message_to_exactly_the_queues_whose_bindings_match(
    installations: Callable[..., Installation], sku: str
) -> None:
    installation = installations()
    increased, shipped, notified = run_commands(sku)

    assert installation.runtime.drain.run() == 3

    assert outbox_ids() == []
    expected = {
        "everything": [increased.id, shipped.id, notified.id],
        "increases": [increased.id],
        "shipments": [shipped.id],
        "notifications": [notified.id],
        "elsewhere": [],
    }
    for listener, ids in expected.items():
        assert installation.queued(listener) == len(ids), listener
        taken = installation.take_all(listener)
        assert [d.properties.message_id for d in taken] == ids, listener


def test_a_published_message_carries_its_id_type_version_and_avro_payload_on_the_wire(
    installations: Callable[..., Installation], sku: str
) -> None:
    installation = installations()
    messages = run_commands(sku)

    installation.runtime.drain.run()

    deliveries = installation.take_all("everything")
    assert len(deliveries) == len(messages)
    for message, delivery in zip(messages, deliveries, strict=True):
        assert delivery.exchange == f"{installation.prefix}{EXCHANGE}"
        assert delivery.routing_key == f"{message.type}.v{message.schema_version}"
        assert delivery.properties.message_id == message.id
        assert delivery.properties.type == message.type
        assert delivery.properties.content_type == "application/avro"
        assert delivery.properties.headers["schema_version"] == message.schema_version
        assert delivery.properties.delivery_mode == 2  # persistent
        assert delivery.body == avro_binary(message)


def test_two_drains_running_at_once_publish_every_message_exactly_once(
    installations: Callable[..., Installation],
) -> None:
    installation = installations(batch_size=7)
    ids = {increase_product_quantity(unique_name("sku"), quantity).id for quantity in range(1, 121)}
    start = threading.Barrier(2)
    published: list[int] = []
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            start.wait(timeout=10)
            published.append(installation.runtime.drain.run())
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            close_publisher(installation.runtime)
            database.close()

    threads = [threading.Thread(target=drain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a drain did not finish"

    assert errors == []
    assert sum(published) == len(ids)
    assert outbox_ids() == []
    assert installation.queued("everything") == len(ids)
    taken = [d.properties.message_id for d in installation.take_all("everything")]
    assert sorted(taken) == sorted(ids)


def test_a_drain_that_cannot_reach_the_broker_raises_publish_error_and_keeps_every_row(
    installations: Callable[..., Installation], sku: str
) -> None:
    closed_port = free_port()
    installation = installations(broker_url=f"amqp://guest:guest@127.0.0.1:{closed_port}/")
    messages = run_commands(sku)

    with pytest.raises(PublishError):
        installation.runtime.drain.run()

    assert outbox_ids() == [m.id for m in messages]


def test_a_batch_that_rabbitmq_refuses_in_part_keeps_every_row_and_is_published_again(
    installations: Callable[..., Installation], sku: str
) -> None:
    installation = installations()
    first = run_commands(sku)
    assert installation.runtime.drain.run() == 3  # declares the exchange and queues
    full = f"{installation.prefix}full"
    # A queue that takes one message and nacks the rest (reject-publish).
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
        channel.queue_declare(queue=full, durable=True, arguments=arguments)
        channel.queue_bind(queue=full, exchange=f"{installation.prefix}{EXCHANGE}", routing_key="#")
        second = run_commands(sku)

        with pytest.raises(PublishError, match="refused 2 of 3"):
            installation.runtime.drain.run()
        assert outbox_ids() == [m.id for m in second]

        channel.queue_purge(queue=full)
        channel.queue_delete(queue=full)
    finally:
        connection.close()
    assert installation.runtime.drain.run() == 3
    assert outbox_ids() == []
    taken = [d.properties.message_id for d in installation.take_all("everything")]
    # The refused batch went to the other queues once before, and again now.
    assert taken == [m.id for m in [*first, *second, *second]]
