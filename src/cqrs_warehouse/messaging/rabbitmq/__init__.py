"""The RabbitMQ transport: the drain publishes to a topic exchange, RabbitMQ's
bindings (from listeners.yaml) fan each message out to the listener queues,
and each listener's consumer applies what arrives.

- ``wire``: a message as AMQP body and properties;
- ``publisher``: confirmed publishing of the drain's batches;
- ``topology``: the exchange, queues and bindings; readiness and depths;
- ``routes``: the broker follows listeners.yaml (applied at each worker boot);
- ``broker`` and ``consumer``: Dramatiq's broker, with the listeners' consumer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware, TimeLimit

from ..drain import Publisher
from ..listening.actors import send_envelope
from ..routing import actor_name
from ..signing import MessageKeys
from .broker import ListenerRoutingBroker, RequeueUnlessRetried
from .publisher import RabbitmqPublisher
from .routes import ApplyRoutesAtBoot, Routes
from .topology import Topology, ping, queue_depths


class RabbitmqTransport:
    def __init__(
        self,
        url: str,
        *,
        exchange: str,
        bindings: Mapping[str, tuple[str, ...]],
        listener_queues: Sequence[str],
        listener_batch_size: int,
        queue_type: str = "classic",
        database: Any,
        prefix: str,
        owners: Mapping[str, str],
        source: str,
        keys: MessageKeys,
    ) -> None:
        """``bindings``: each listener queue's topic patterns; ``listener_queues``:
        those queues in listeners.yaml's order; ``owners``: queue -> listener;
        ``queue_type``: QUEUE_TYPE, the type of every queue it declares;
        ``database`` keeps the record of what was declared (``routes``);
        ``keys`` sign what it publishes and sends."""
        self.broker: dramatiq.Broker
        self.broker = broker = ListenerRoutingBroker(
            url=url,
            confirm_delivery=True,
            listener_batch_size=listener_batch_size,
            listener_queues=list(listener_queues),
            queue_type=queue_type,
            # Of Dramatiq's default middleware, the two the actors use: the
            # others serve options no actor here sets, and each runs on every message.
            middleware=[TimeLimit(), RequeueUnlessRetried()],
        )
        self.parameters = broker.parameters
        self.topology = Topology(broker, exchange, bindings)
        self.keys = keys
        self.publisher: Publisher = RabbitmqPublisher(self.parameters, self.topology, keys)
        self.routes = Routes(
            database, self.topology, self.parameters, prefix=prefix, owners=owners, source=source
        )
        self.middleware: list[Middleware] = [ApplyRoutesAtBoot(self.routes)]

    def send(self, listener: str, envelope: dict[str, Any]) -> None:
        """Hand ``envelope`` to one listener again, signed (a held message resent)."""
        send_envelope(self.broker, actor_name(listener), self.keys.signed(envelope))

    def check(self) -> None:
        """Raise unless RabbitMQ accepts a connection now."""
        ping(self.parameters)

    def queue_depths(self, queues: Mapping[str, str]) -> dict[str, tuple[int, int | None]]:
        """Messages waiting in each queue (and its delay queue), and its consumers."""
        return queue_depths(self.parameters, queues)

    def start(self) -> None:
        """Nothing to do when the process starts: RabbitMQ keeps the queues."""
