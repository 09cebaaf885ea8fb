"""``rabbitmq.publisher.coalesced_frames``: the frames of many publishes or acks
reach the socket in one write, and RabbitMQ reads every one of them, in order.
Against the real RabbitMQ.

On purpose, this pins pika's private seam the helper takes the frames at:
a connection hands each frame to its transport through
``_adapter_emit_data`` (its ``_transport.write`` writes to the socket).
If pika changes that, these tests fail, not the drain's publishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest

from cqrs_warehouse.messaging.rabbitmq.publisher import coalesced_frames
from tests.support.services import BROKER_URL, unique_name


class CountedWrites:
    """Counts what pika's connection hands to ``_adapter_emit_data`` and what
    that hands to its transport for the socket (pika's privates, pinned)."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.impl = connection._impl
        self.transport = self.impl._transport
        self.writes: list[bytes] = []
        self.emitted: list[bytes] = []
        self.counting_emitted = False
        self._write = self.transport.write

        def write(data: bytes) -> None:
            self.writes.append(data)
            self._write(data)

        self.transport.write = write

    def count_emitted(self) -> None:
        """Also count the calls of ``_adapter_emit_data`` (outside ``coalesced_frames``,
        which sets its own on the instance)."""
        emit = self.impl._adapter_emit_data

        def emitted(data: bytes) -> None:
            self.emitted.append(data)
            emit(data)

        self.impl._adapter_emit_data = emitted  # an attribute of this instance only
        self.counting_emitted = True

    def close(self) -> None:
        self.transport.write = self._write
        if self.counting_emitted:
            del self.impl._adapter_emit_data  # pika's own method again


@pytest.fixture
def channel(rabbitmq: None) -> Iterator[tuple[pika.BlockingConnection, Any, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    queue = unique_name("coalesced")
    channel.queue_declare(queue, exclusive=True)  # gone with the connection
    yield connection, channel, queue
    if connection.is_open:
        connection.close()


def received(channel: Any, queue: str, count: int) -> list[bytes]:
    bodies = []
    for method, _, body in channel.consume(queue, inactivity_timeout=10):
        assert method is not None, f"only {len(bodies)} of {count} messages arrived"
        bodies.append(body)
        if len(bodies) == count:
            break
    channel.cancel()
    return bodies


def test_the_frames_of_many_publishes_go_out_in_one_write_and_all_arrive_in_order(channel):
    connection, amqp, queue = channel
    counted = CountedWrites(connection)
    try:
        with coalesced_frames(connection):
            for number in range(50):
                amqp._impl.basic_publish(exchange="", routing_key=queue, body=b"%d" % number)
            assert counted.writes == []  # nothing yet: held until the block ends
    finally:
        counted.close()
    connection.process_data_events(time_limit=0)

    assert len(counted.writes) == 1
    assert received(amqp, queue, 50) == [b"%d" % number for number in range(50)]


def test_acks_sent_together_settle_every_delivery(channel):
    connection, amqp, queue = channel
    for number in range(20):
        amqp.basic_publish(exchange="", routing_key=queue, body=b"%d" % number)
    tags = []
    for method, _, _ in amqp.consume(queue, inactivity_timeout=10):
        assert method is not None
        tags.append(method.delivery_tag)
        if len(tags) == 20:
            break
    counted = CountedWrites(connection)
    try:
        with coalesced_frames(connection):
            for tag in tags:
                amqp._impl.basic_ack(tag)
    finally:
        counted.close()
    amqp.cancel()
    connection.process_data_events(time_limit=0)

    assert len(counted.writes) == 1
    # Nothing left unacknowledged: closing the channel would requeue it.
    amqp.close()
    check = connection.channel()
    assert check.queue_declare(queue, passive=True).method.message_count == 0


def test_pika_writes_each_frame_on_its_own_outside_the_block(channel):
    # What the helper is for: without it, three frames per publish, three
    # writes, each handed to ``_adapter_emit_data`` (where the helper takes them).
    connection, amqp, queue = channel
    counted = CountedWrites(connection)
    counted.count_emitted()
    try:
        for number in range(5):
            amqp._impl.basic_publish(exchange="", routing_key=queue, body=b"%d" % number)
    finally:
        counted.close()
    connection.process_data_events(time_limit=0)

    assert len(counted.writes) == 15
    assert counted.emitted == counted.writes
    assert received(amqp, queue, 5) == [b"%d" % number for number in range(5)]
