"""What the service declares on RabbitMQ, and how it looks at it: the exchange,
the listener queues and their bindings; readiness and queue depths."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from dramatiq.common import dq_name


@dataclass(frozen=True)
class Topology:
    broker: Any  # a broker.ListenerRoutingBroker (it declares queues as its consumers do)
    exchange: str
    bindings: Mapping[str, tuple[str, ...]]  # queue name -> topic patterns

    def declare(self, channel: Any) -> None:
        """Declare the exchange, the listener queues and their bindings (idempotent).

        Queues through the Dramatiq broker, so that their arguments match the
        ones its consumers declare.
        """
        channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
        for queue_name, patterns in self.bindings.items():
            self.broker.declare_queue(queue_name, ensure=True)
            for pattern in patterns:
                channel.queue_bind(queue=queue_name, exchange=self.exchange, routing_key=pattern)


def _short_lived(parameters: Any) -> pika.BlockingConnection:
    """A connection to the first node of ``parameters`` (one, or a list) that
    accepts one, each tried once: 2 s to connect, 4 s to open the connection
    (a stalled node accepts TCP connections and answers nothing)."""
    quick = []
    for params in parameters if isinstance(parameters, list) else [parameters]:
        params = copy.copy(params)
        params.connection_attempts = 1
        params.socket_timeout = 2
        params.blocked_connection_timeout = 2
        params.stack_timeout = 4
        quick.append(params)
    return pika.BlockingConnection(quick)


def ping(parameters: Any) -> None:
    """Raise unless RabbitMQ accepts a connection now."""
    _short_lived(parameters).close()


def queue_depths(parameters: Any, queues: Mapping[str, str]) -> dict[str, tuple[int, int | None]]:
    """(messages ready in each queue plus its delay queue, its consumers):
    {label: (count, consumers)}; (0, 0) for a queue that does not exist yet."""
    stats = queue_stats(parameters, list(queues.values()))
    return {label: stats[queue] or (0, 0) for label, queue in queues.items()}


def queue_stats(
    parameters: Any, queues: Sequence[str], *, delayed: bool = True
) -> dict[str, tuple[int, int] | None]:
    """(messages ready, consumers) of each queue, None for one that does not
    exist; ``delayed``: its delay queue's messages counted with it.

    Declares passively, so a queue that does not exist is not created.
    """
    connection = _short_lived(parameters)
    try:
        stats: dict[str, tuple[int, int] | None] = {}
        for queue in queues:
            main = _passive(connection, queue)
            if main is not None and delayed:
                later = _passive(connection, dq_name(queue))
                main = (main[0] + (later[0] if later else 0), main[1])
            stats[queue] = main
        return stats
    finally:
        connection.close()


def _passive(connection: Any, queue: str) -> tuple[int, int] | None:
    channel = connection.channel()
    try:
        method = channel.queue_declare(queue=queue, passive=True).method
    except pika.exceptions.ChannelClosedByBroker:
        return None  # not declared: nothing waits there
    if channel.is_open:
        channel.close()
    return int(method.message_count), int(method.consumer_count)
