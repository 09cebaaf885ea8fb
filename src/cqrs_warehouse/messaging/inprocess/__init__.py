"""The in-process transport, for the embedded default (`cqrs-warehouse serve`
without BROKER_URL): Dramatiq's StubBroker, with the fan-out to listeners
done in Python from listeners.yaml.

The StubBroker keeps its queues in memory. So each hand-over to a listener
is first recorded (``Delivery``) in the drain's transaction, deleted once the
listener is done with it, and handed over again when the process starts
after a crash (listeners skip what they had already applied): ``serve``
killed with SIGKILL loses no accepted command's effect.

What it hands over is signed, as on RabbitMQ, with the process's keys (a
random one unless MESSAGE_KEY is set); a delivery is recorded unsigned and
signed when it is handed over, so one left by a previous run, whose key may
have been another, is handed over signed with this run's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import dramatiq
import peewee
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from ..drain import Publisher
from ..envelope import envelope_from_record
from ..listening.actors import send_envelope
from ..message import routing_key_for
from ..routing import RoutingConfig, actor_name
from ..signing import SIGNATURE, MessageKeys
from ..storage.models import Model
from ..storage.outbox import OutboxRow


class Delivery(Model):
    """A message handed to a listener on the in-process broker, until it is done."""

    id = peewee.BigAutoField()
    listener = peewee.CharField(max_length=100)
    envelope = peewee.TextField()

    class Meta:
        table_name = "messaging_deliveries"


class InProcessTransport:
    def __init__(self, routing: RoutingConfig, keys: MessageKeys) -> None:
        self.routing = routing
        self.keys = keys
        self.broker: dramatiq.Broker = StubBroker()
        self.publisher: Publisher = _Publisher(self)
        self.middleware: list[Middleware] = [_ForgetDone()]

    def send(self, listener: str, envelope: dict[str, Any]) -> None:
        """Hand ``envelope`` to one listener again, recorded as a delivery first
        (call inside a transaction: the record commits with it)."""
        plain = {k: v for k, v in envelope.items() if k not in ("delivery", SIGNATURE)}
        delivery = Delivery.create(listener=listener, envelope=json.dumps(plain))
        self._hand_over(actor_name(listener), plain, delivery.id)

    def check(self) -> None:
        """Nothing to reach: the broker is in this process."""

    def queue_depths(self, queues: Mapping[str, str]) -> dict[str, tuple[int, int | None]]:
        stub = cast(StubBroker, self.broker)
        return {  # (A stub queue has no consumers to count.)
            label: (stub.queues[queue].qsize(), None)
            for label, queue in queues.items()
            if queue in stub.queues
        }

    def start(self) -> int:
        """Hand over again every delivery a previous run left unfinished; how many."""
        pending = list(Delivery.select().order_by(Delivery.id))
        for delivery in pending:
            self._hand_over(
                actor_name(delivery.listener), json.loads(delivery.envelope), delivery.id
            )
        return len(pending)

    def _hand_over(self, actor: str, envelope: dict[str, Any], delivery: int) -> None:
        send_envelope(self.broker, actor, {**self.keys.signed(envelope), "delivery": delivery})


class _Publisher:
    """Routes in Python and records each hand-over, handed over once the drain commits."""

    def __init__(self, transport: InProcessTransport) -> None:
        self.transport = transport

    def publish(
        self, rows: Sequence[OutboxRow], *, meanwhile: Callable[[], object] | None = None
    ) -> Callable[[], None]:
        handovers = []
        for row in rows:
            key = routing_key_for(row.type, row.schema_version)
            envelope = envelope_from_record(row)
            for spec in self.transport.routing.listeners_for(key):
                delivery = Delivery.create(listener=spec.name, envelope=json.dumps(envelope))
                handovers.append((spec.actor_name, envelope, delivery.id))
        if meanwhile is not None:
            meanwhile()

        def hand_over() -> None:
            for actor, envelope, delivery in handovers:
                self.transport._hand_over(actor, envelope, delivery)

        return hand_over


class _ForgetDone(Middleware):
    """Forgets a delivery once its listener is done with it (applied, skipped or
    dead-lettered): a message that raised comes back, and keeps its record."""

    def after_process_message(
        self, broker: dramatiq.Broker, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        if exception is not None:
            return
        ids = [
            envelope["delivery"]
            for envelope in message.args
            if isinstance(envelope, dict) and isinstance(envelope.get("delivery"), int)
        ]
        if ids:
            Delivery.delete().where(Delivery.id.in_(ids)).execute()
