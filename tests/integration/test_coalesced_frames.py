"""``transport.coalesced_frames``: the frames of many publishes or acks reach
the socket in one write, and RabbitMQ reads every one of them, in order.
Against the real RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from cqrs_warehouse.messaging.transport import coalesced_frames
from tests.conftest import BROKER_URL, unique_name


class CountedWrites:
    """Counts what pika's connection hands to its transport for the socket."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.transport = connection._impl._transport
        self.writes: list[bytes] = []
        self._write = self.transport.write

        def write(data: bytes) -> None:
            self.writes.append(data)
            self._write(data)

        self.transport.write = write

    def close(self) -> None:
        self.transport.write = self._write


@pytest.fixture
def channel() -> Iterator[tuple[pika.BlockingConnection, object, str]]:
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    channel = connection.channel()
    queue = unique_name("coalesced")
    channel.queue_declare(queue, exclusive=True)  # gone with the connection
    yield connection, channel, queue
    if connection.is_open:
        connection.close()


def received(channel: object, queue: str, count: int) -> list[bytes]:
    bodies = []
    for method, _, body in channel.consume(queue, inactivity_timeout=10):  # type: ignore[attr-defined]
        assert method is not None, f"only {len(bodies)} of {count} messages arrived"
        bodies.append(body)
        if len(bodies) == count:
            break
    channel.cancel()  # type: ignore[attr-defined]
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
    # What the helper is for: without it, three frames per publish, three writes.
    connection, amqp, queue = channel
    counted = CountedWrites(connection)
    try:
        for number in range(5):
            amqp._impl.basic_publish(exchange="", routing_key=queue, body=b"%d" % number)
    finally:
        counted.close()
    connection.process_data_events(time_limit=0)

    assert len(counted.writes) == 15
    assert received(amqp, queue, 5) == [b"%d" % number for number in range(5)]
