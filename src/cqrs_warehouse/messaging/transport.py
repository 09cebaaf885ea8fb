"""What the runtime needs of a transport; ``rabbitmq`` and ``inprocess`` are the two."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import dramatiq
from dramatiq.middleware import Middleware

from .drain import Publisher


class Transport(Protocol):
    #: The Dramatiq broker the actors are declared on.
    broker: dramatiq.Broker
    #: What the drain publishes through.
    publisher: Publisher
    #: Middleware the transport needs on the broker.
    middleware: list[Middleware]

    def send(self, listener: str, envelope: dict[str, Any]) -> None:
        """Hand ``envelope`` to one listener again, bypassing the routing."""

    def check(self) -> None:
        """Raise unless the broker can be reached now (readiness)."""

    def queue_depths(self, queues: Mapping[str, str]) -> dict[str, tuple[int, int | None]]:
        """Messages waiting in each listener's queue and its consumers (None where
        the transport cannot tell): {label: (count, consumers)}."""

    def start(self) -> Any:
        """Run once a worker starts in this process."""
