"""The Dramatiq brokers the service runs on. Used by bootstrap only.

RabbitMQ routes one published message through the topic exchange to every
bound listener queue, with a single body. Dramatiq's consumer expects that
body to be a Dramatiq message naming its actor, and no Dramatiq broker
consumes from an exchange fan-out, so ``EventRoutingRabbitmqBroker``'s
consumer turns each of our Avro deliveries into a Dramatiq message for the
actor that owns the queue it arrived on. Everything else (acks, retries,
delays, reconnects) stays Dramatiq's own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import dq_name

from .transport import envelope_from_amqp


class EventRoutingRabbitmqBroker(RabbitmqBroker):
    @property
    def consumer_class(self) -> type:
        return _EventRoutingConsumer

    def queue_owner(self, queue_name: str) -> str | None:
        owners = [a.actor_name for a in self.actors.values() if a.queue_name == queue_name]
        return owners[0] if len(owners) == 1 else None


class _EventRoutingConsumer(_RabbitmqConsumer):
    def __init__(self, broker: EventRoutingRabbitmqBroker, queue_name: str, *args: Any) -> None:
        super().__init__(broker, queue_name, *args)
        self.owner = broker.queue_owner(queue_name)
        self.iterator = self._translate(self.iterator)

    def _translate(self, deliveries: Iterator[Any]) -> Iterator[Any]:
        for method, properties, body in deliveries:
            if method is not None and self.owner is not None:
                envelope = envelope_from_amqp(properties, body)
                if envelope is not None:
                    body = dramatiq.Message(
                        queue_name=self.queue_name,
                        actor_name=self.owner,
                        args=(envelope,),
                        kwargs={},
                        options={},
                        message_id=envelope["id"] or "",
                    ).encode()
            yield method, properties, body


def _short_lived(parameters: Any) -> pika.BlockingConnection:
    params = parameters[0] if isinstance(parameters, list) else parameters
    quick = copy.copy(params)
    quick.connection_attempts = 1
    quick.socket_timeout = 2
    quick.blocked_connection_timeout = 2
    return pika.BlockingConnection(quick)


def ping(parameters: Any) -> None:
    """Raise unless RabbitMQ accepts a connection now."""
    _short_lived(parameters).close()


def queue_depths(parameters: Any, queues: dict[str, str]) -> dict[str, int]:
    """Messages ready in each queue plus its delay queue: {label: count}.

    Declares passively, so a queue that does not exist yet counts 0 and is
    not created.
    """
    connection = _short_lived(parameters)
    try:
        depths = {}
        for label, queue in queues.items():
            total = 0
            for name in (queue, dq_name(queue)):
                channel = connection.channel()
                try:
                    total += channel.queue_declare(queue=name, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    continue  # not declared yet: nothing waits there
                if channel.is_open:
                    channel.close()
            depths[label] = total
        return depths
    finally:
        connection.close()
