"""The outbox drain against a real PostgreSQL and a real RabbitMQ, in-process.

Commands run here, the drain is called directly, and what RabbitMQ holds in
each listener queue is read back with pika. No workers consume, so a queue
holds exactly what was routed to it.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable

import fastavro
import pika
import pytest

from cqrs_warehouse.messaging.errors import PublishError
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.messaging.testing import eventually
from cqrs_warehouse.runtime import Runtime
from tests.broker.conftest import OnRabbitmq
from tests.support.environment import SCHEMAS
from tests.support.installation import EXCHANGE
from tests.support.processes import free_port
from tests.support.services import BROKER_URL, unique_name


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


def run_commands(runtime: Runtime, sku: str) -> list[Message]:
    commands = runtime.services["warehouse"].commands
    return [
        commands.increase_product_quantity(sku, 10),
        commands.ship_product_quantity(sku, 4),
        commands.notify_low_product_quantity(sku, 6),
    ]


def test_a_drain_publishes_each_message_to_exactly_the_queues_whose_bindings_match(
    on_rabbitmq: Callable[..., OnRabbitmq], sku: str
) -> None:
    installation = on_rabbitmq()
    increased, shipped, notified = run_commands(installation.runtime, sku)

    assert installation.runtime.actors.drain.run() == 3

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


def test_the_publisher_calls_meanwhile_once_after_its_messages_went_out_before_the_confirms(
    on_rabbitmq: Callable[..., OnRabbitmq], sku: str
) -> None:
    installation = on_rabbitmq()
    runtime = installation.runtime
    run_commands(runtime, sku)
    assert runtime.actors.drain.run() == 3  # declares the exchange and queues
    installation.take_all("everything")
    run_commands(runtime, sku)
    calls = []

    def routed() -> None:
        assert installation.queued("everything") == 3

    def meanwhile() -> None:
        # The publisher is waiting for this, not yet for its confirms: the
        # messages must be out already for RabbitMQ to route them.
        eventually(routed, timeout=10)
        calls.append(1)

    with runtime.database.atomic():
        rows = runtime.storage.outbox.take(10)
        assert runtime.transport.publisher.publish(rows, meanwhile=meanwhile) is None
    assert calls == [1]


def test_a_published_message_carries_its_id_type_version_and_avro_payload_on_the_wire(
    on_rabbitmq: Callable[..., OnRabbitmq], sku: str
) -> None:
    installation = on_rabbitmq()
    messages = run_commands(installation.runtime, sku)

    installation.runtime.actors.drain.run()

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
    on_rabbitmq: Callable[..., OnRabbitmq],
) -> None:
    installation = on_rabbitmq(OUTBOX_BATCH_SIZE="7")
    runtime = installation.runtime
    commands = runtime.services["warehouse"].commands
    ids = {
        commands.increase_product_quantity(unique_name("sku"), quantity).id
        for quantity in range(1, 121)
    }
    start = threading.Barrier(2)
    published: list[int] = []
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            start.wait(timeout=10)
            published.append(runtime.actors.drain.run())
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            runtime.database.close()  # this thread's connection

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
    on_rabbitmq: Callable[..., OnRabbitmq], sku: str
) -> None:
    closed_port = free_port()
    installation = on_rabbitmq(BROKER_URL=f"amqp://guest:guest@127.0.0.1:{closed_port}/")
    messages = run_commands(installation.runtime, sku)

    with pytest.raises(PublishError):
        installation.runtime.actors.drain.run()

    assert outbox_ids() == [m.id for m in messages]


def test_a_batch_that_rabbitmq_refuses_in_part_keeps_every_row_and_is_published_again(
    on_rabbitmq: Callable[..., OnRabbitmq], sku: str
) -> None:
    installation = on_rabbitmq()
    drain = installation.runtime.actors.drain
    first = run_commands(installation.runtime, sku)
    assert drain.run() == 3  # declares the exchange and queues
    full = f"{installation.prefix}full"
    # A queue that takes one message and nacks the rest (reject-publish).
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}
        channel.queue_declare(queue=full, durable=True, arguments=arguments)
        channel.queue_bind(queue=full, exchange=f"{installation.prefix}{EXCHANGE}", routing_key="#")
        second = run_commands(installation.runtime, sku)

        with pytest.raises(PublishError, match="refused 2 of 3"):
            drain.run()
        assert outbox_ids() == [m.id for m in second]

        channel.queue_purge(queue=full)
        channel.queue_delete(queue=full)
    finally:
        connection.close()
    assert drain.run() == 3
    assert outbox_ids() == []
    taken = [d.properties.message_id for d in installation.take_all("everything")]
    # The refused batch went to the other queues once before, and again now.
    assert taken == [m.id for m in [*first, *second, *second]]
