"""Which classic queue version the listener queues get, against the real RabbitMQ.

The broker declares its queues without ``x-queue-version`` (the server's
default or an operator's policy decides); queues that an earlier release
declared as version 2 are kept as they are. This pins the two private
methods of Dramatiq's broker that ``ListenerRoutingBroker`` overrides
(``_declare_queue``, ``_declare_dq_queue``), through ``declare_queue``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest
from dramatiq.common import dq_name, xq_name
from dramatiq.errors import ConnectionClosed

from cqrs_warehouse.messaging.rabbitmq.broker import ListenerRoutingBroker
from tests.support.services import BROKER_URL


@pytest.fixture
def broker(rabbitmq: None) -> Iterator[ListenerRoutingBroker]:
    broker = ListenerRoutingBroker(url=BROKER_URL, middleware=[])
    yield broker
    broker.close()


def dramatiq_arguments(queue: str) -> dict[str, Any]:
    """The arguments Dramatiq declares a queue and its delay queue with."""
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": xq_name(queue)}


def redeclare(queue: str, arguments: dict[str, Any]) -> bool:
    """Whether RabbitMQ accepts declaring ``queue`` with exactly ``arguments``."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        connection.channel().queue_declare(queue, durable=True, arguments=arguments)
        return True
    except pika.exceptions.ChannelClosedByBroker as error:
        assert error.reply_code == 406, error
        return False
    finally:
        if connection.is_open:
            connection.close()


def test_queues_are_declared_without_a_queue_version(
    broker: ListenerRoutingBroker, queue: str
) -> None:
    broker.declare_queue(queue, ensure=True)

    for declared in (queue, dq_name(queue)):
        assert redeclare(declared, dramatiq_arguments(queue))
        assert not redeclare(declared, {**dramatiq_arguments(queue), "x-queue-version": 2})


def test_queues_an_earlier_release_declared_as_version_2_are_kept_and_used(
    broker: ListenerRoutingBroker, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    version_2 = {**dramatiq_arguments(queue), "x-queue-version": 2}
    for declared in (queue, dq_name(queue)):
        assert redeclare(declared, version_2)

    with caplog.at_level(logging.WARNING):
        broker.declare_queue(queue, ensure=True)

    warned = [r.getMessage() for r in caplog.records if r.name.startswith("dramatiq.broker")]
    assert len(warned) == 2, warned
    assert any(f"Queue {queue} exists" in message for message in warned)
    assert any(f"Queue {dq_name(queue)} exists" in message for message in warned)
    for declared in (queue, dq_name(queue)):
        assert redeclare(declared, version_2)  # unchanged
    # The broker's channel works after the refusal: a message goes through.
    broker.channel.basic_publish("", queue, b"still in use")
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        method, _, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    assert method is not None and body == b"still in use"


def test_any_other_difference_of_arguments_still_fails(
    broker: ListenerRoutingBroker, queue: str
) -> None:
    assert redeclare(queue, {**dramatiq_arguments(queue), "x-max-length": 5})

    with pytest.raises(ConnectionClosed):
        broker.declare_queue(queue, ensure=True)
