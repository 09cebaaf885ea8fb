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

from collections.abc import Iterator
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer

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
