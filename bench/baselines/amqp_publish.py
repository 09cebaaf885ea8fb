"""Raw AMQP publishing baselines: what RabbitMQ and pika allow the drain to reach.

Messages shaped like the drain's (persistent, Avro-sized body, the same
properties and headers) go to a durable topic exchange bound to as many
durable queues as the service has listeners, so RabbitMQ does the same
fan-out work. Two ways of waiting for publisher confirms:

- ``per_message``: pika's BlockingChannel in confirm mode, where each
  basic_publish waits for its own confirm: one round trip per message, as
  the drain's RabbitmqPublisher does today.
- ``batched``: publish a whole batch (the drain's batch size), then wait
  once for the broker's confirms of all of it (RabbitMQ acks several
  delivery tags at once with ``multiple``). pika's BlockingChannel cannot
  do this, so this uses pika's asynchronous SelectConnection.
- ``tx_batched``: the same batches in AMQP transactions on a BlockingChannel
  (``tx_select``, then ``tx_commit`` once per batch), which also returns only
  once RabbitMQ has taken the whole batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika
import pika.spec
from tests.support.services import delete_from_broker

from ..infra import broker_parameters

ROUTING_KEY = "Warehouse.Events.ProductQuantityIncreased.v1"
BODY = b"\x0ab00042\x02"  # an Avro payload of the same size as the service's


def _properties(index: int) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type="application/avro",
        delivery_mode=2,
        message_id=str(uuid.uuid4()),
        type="Warehouse.Events.ProductQuantityIncreased",
        correlation_id=uuid.uuid4().hex,
        headers={"schema_version": 1, "stream": "b00042", "position": index + 1},
    )


@contextmanager
def topology(prefix: str, queues: int, url: str) -> Iterator[str]:
    """A topic exchange fanning out to ``queues`` durable queues; deleted afterwards."""
    exchange = f"{prefix}x"
    names = [f"{prefix}q{i}" for i in range(queues)]
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        for name in names:
            channel.queue_declare(queue=name, durable=True)
            channel.queue_bind(queue=name, exchange=exchange, routing_key="Warehouse.Events.#")
    finally:
        connection.close()
    try:
        yield exchange
    finally:
        delete_from_broker(names, [exchange], url)


def per_message(url: str, exchange: str, count: int) -> float:
    """Messages/s publishing with one confirm wait per message."""
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = [_properties(i) for i in range(count)]
        started = time.perf_counter()
        for index in range(count):
            channel.basic_publish(exchange, ROUTING_KEY, BODY, properties[index])
        return count / (time.perf_counter() - started)
    finally:
        connection.close()


def tx_batched(url: str, exchange: str, count: int, batch: int) -> float:
    """Messages/s publishing ``batch`` at a time in one AMQP transaction each."""
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        channel = connection.channel()
        channel.tx_select()
        properties = [_properties(i) for i in range(count)]
        started = time.perf_counter()
        for index in range(count):
            channel.basic_publish(exchange, ROUTING_KEY, BODY, properties[index])
            if (index + 1) % batch == 0 or index + 1 == count:
                channel.tx_commit()
        return count / (time.perf_counter() - started)
    finally:
        connection.close()


class _BatchedPublisher:
    """Publishes ``batch`` messages, waits for all their confirms, repeats."""

    def __init__(self, url: str, exchange: str, count: int, batch: int) -> None:
        self.exchange = exchange
        self.count = count
        self.batch = batch
        self.properties = [_properties(i) for i in range(count)]
        self.published = 0  # delivery tags are 1..published
        self.confirmed = 0
        self.started = 0.0
        self.elapsed = 0.0
        self.error: str | None = None
        self.connection = pika.SelectConnection(
            broker_parameters(url),
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_error,
            on_close_callback=lambda _conn, reason: self._stop(reason),
        )
        self.channel: Any = None

    def run(self, timeout: float) -> float:
        self.connection.ioloop.call_later(timeout, lambda: self._fail("timed out"))
        self.connection.ioloop.start()
        if self.error is not None or self.confirmed != self.count:
            raise RuntimeError(f"batched publishing failed: {self.error}")
        return self.count / self.elapsed

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._start())

    def _start(self) -> None:
        self.started = time.perf_counter()
        self._publish_batch()

    def _publish_batch(self) -> None:
        end = min(self.count, self.published + self.batch)
        for index in range(self.published, end):
            self.channel.basic_publish(self.exchange, ROUTING_KEY, BODY, self.properties[index])
        self.published = end

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(f"nack for delivery tag {method.delivery_tag}")
            return
        self.confirmed = method.delivery_tag if method.multiple else self.confirmed + 1
        if self.confirmed < self.published:
            return
        if self.published < self.count:
            self._publish_batch()
        else:
            self.elapsed = time.perf_counter() - self.started
            self.connection.close()

    def _fail(self, error: str) -> None:
        if self.error is None and self.confirmed < self.count:
            self.error = error
            if self.connection.is_open:
                self.connection.close()
            else:
                self.connection.ioloop.stop()

    def _on_error(self, _connection: Any, error: Any) -> None:
        self.error = repr(error)
        self.connection.ioloop.stop()

    def _stop(self, reason: Any) -> None:
        self.connection.ioloop.stop()


def batched(url: str, exchange: str, count: int, batch: int) -> float:
    """Messages/s publishing ``batch`` at a time with one confirm wait per batch."""
    return _BatchedPublisher(url, exchange, count, batch).run(timeout=120)
