"""QUEUE_TYPE=quorum against the real RabbitMQ (one node: a quorum queue of one
member behaves as one of three for what is checked here): every queue the
broker declares, Dramatiq's delay and dead-letter queues included, is a quorum
queue; the delivery limit never drops a message RabbitMQ hands back; consumer
priorities still apply; a queue of the other type is a clear error that changes
nothing. Pins the private Dramatiq methods ``ListenerRoutingBroker`` overrides
(``_build_queue_arguments``, ``_declare_xq_queue``), through ``declare_queue``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL
from dramatiq.common import dq_name, xq_name

from cqrs_warehouse.messaging.errors import ConfigurationError
from cqrs_warehouse.messaging.rabbitmq.broker import ListenerRoutingBroker, QueueTypeMismatch
from tests.support import rabbitmqctl
from tests.support.services import BROKER_URL, connect


@pytest.fixture
def quorum(rabbitmq: None) -> Iterator[ListenerRoutingBroker]:
    broker = ListenerRoutingBroker(url=BROKER_URL, middleware=[], queue_type="quorum")
    yield broker
    broker.close()


def declared(queue: str) -> dict[str, tuple[str, str]]:
    """{name: (type, arguments as rabbitmqctl prints them)} of ``queue`` and its
    delay and dead-letter queues."""
    rows = rabbitmqctl._rows("list_queues", "-q", "name", "type", "arguments")
    names = {queue, dq_name(queue), xq_name(queue)}
    return {name: (kind, arguments) for name, kind, arguments in rows if name in names}


def test_every_queue_is_declared_as_a_quorum_queue_with_dramatiqs_arguments(
    quorum: ListenerRoutingBroker, queue: str
) -> None:
    quorum.declare_queue(queue, ensure=True)

    queues = declared(queue)
    assert {name: kind for name, (kind, _) in queues.items()} == {
        queue: "quorum",
        dq_name(queue): "quorum",
        xq_name(queue): "quorum",
    }
    for name in (queue, dq_name(queue)):
        arguments = queues[name][1]
        assert f'"x-dead-letter-routing-key","{xq_name(queue)}"' in arguments
        assert f'"x-delivery-limit",{2**63 - 1}' in arguments
        assert "x-max-priority" not in arguments
    assert f'"x-message-ttl",{DEAD_MESSAGE_TTL}' in queues[xq_name(queue)][1]
    # Declaring again (another worker process, the next start) is accepted.
    fresh = ListenerRoutingBroker(url=BROKER_URL, middleware=[], queue_type="quorum")
    try:
        fresh.declare_queue(queue, ensure=True)
    finally:
        fresh.close()


def test_a_message_handed_back_again_and_again_is_never_dropped(
    quorum: ListenerRoutingBroker, queue: str
) -> None:
    # RabbitMQ 4 would drop (or dead-letter) it at its 21st delivery without
    # the declared limit; the service alone decides when to give up.
    quorum.declare_queue(queue, ensure=True)
    connection = connect()
    try:
        channel = connection.channel()
        channel.basic_publish("", queue, b"again", pika.BasicProperties(delivery_mode=2))
        deliveries = 0
        for _ in range(30):
            method = None
            for _ in range(100):  # a returned message is ready again within milliseconds
                method, _, _ = channel.basic_get(queue)
                if method is not None:
                    break
                connection.sleep(0.01)
            assert method is not None, f"gone after {deliveries} deliveries"
            deliveries += 1
            channel.basic_nack(method.delivery_tag, requeue=True)
        assert deliveries == 30
        assert channel.queue_declare(xq_name(queue), passive=True).method.message_count == 0
    finally:
        connection.close()


@pytest.mark.parametrize(("existing", "wanted"), [("classic", "quorum"), ("quorum", "classic")])
def test_a_queue_of_the_other_type_is_a_clear_error_and_is_left_as_it_is(
    queue: str, existing: str, wanted: str
) -> None:
    before = ListenerRoutingBroker(url=BROKER_URL, middleware=[], queue_type=existing)
    after = ListenerRoutingBroker(url=BROKER_URL, middleware=[], queue_type=wanted)
    try:
        before.declare_queue(queue, ensure=True)
        before.channel.basic_publish("", queue, b"kept")

        with pytest.raises(QueueTypeMismatch) as refused:
            after.declare_queue(queue, ensure=True)

        assert isinstance(refused.value, ConfigurationError)
        message = str(refused.value)
        assert f"queue {queue} exists with another type than QUEUE_TYPE={wanted}" in message
        assert "Changing QUEUE_TYPE" in message
        assert declared(queue)[queue][0] == existing
        connection = connect()
        try:
            _, _, body = connection.channel().basic_get(queue, auto_ack=True)
        finally:
            connection.close()
        assert body == b"kept"
    finally:
        before.close()
        after.close()
