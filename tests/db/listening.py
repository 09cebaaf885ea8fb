"""What the database tier's tests of the listener engine share: the messages of
a stream, listeners around plain functions, the warehouse's own listeners
built from a runtime, and a listener's bookkeeping read back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import peewee
import pytest

from cqrs_warehouse.messaging.archive import Archive, ArchivedMessage
from cqrs_warehouse.messaging.envelope import envelope_of
from cqrs_warehouse.messaging.handler import FunctionHandler, Handler
from cqrs_warehouse.messaging.listening import Engine, Outcome
from cqrs_warehouse.messaging.listening.ordering import batch_order
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.routing import ListenerSpec, RetryPolicy
from cqrs_warehouse.messaging.storage.models import HeldMessage
from cqrs_warehouse.runtime import Runtime
from cqrs_warehouse.warehouse.processors import low_quantity
from cqrs_warehouse.warehouse.processors.low_quantity import LowQuantityNotifier
from cqrs_warehouse.warehouse.views import products
from cqrs_warehouse.warehouse.views.products import ProductsView
from tests.support.services import unique_name

Envelope = dict[str, Any]


def event(kind: str, sku: str, quantity: int, position: int) -> Message:
    """The position-th event of a stream whose events all have ``kind``."""
    key = f"{kind}.v1"
    return Message(
        type=kind,
        schema_version=1,
        payload={"sku": sku, "quantity": quantity},
        stream=sku,
        position=position,
        predecessors={key: position - 1} if position > 1 else {},
    )


def listener(
    name: str,
    handler: Handler | Callable[[Message], Any],
    *,
    bindings: Iterable[str] = ("#",),
    attempts: int = 5,
    reset: Callable[[], Any] | None = None,
) -> ListenerSpec:
    """A listener around ``handler`` as listeners.yaml makes one (a plain function
    wrapped; the handler's own reset unless given one), retried without delay."""
    if not isinstance(handler, Handler):
        handler = FunctionHandler(handler)
    if reset is None and handler.resettable:
        reset = handler.reset
    return ListenerSpec(
        name=name,
        handler_path="",
        handler=handler,
        bindings=tuple(bindings),
        retry=RetryPolicy(max_attempts=attempts, min_delay=0.0, max_delay=0.0),
        reset=reset,
    )


def recorder(
    name: str, seen: list, *, fail_on: set[int] | None = None, attempts: int = 3
) -> ListenerSpec:
    """A listener that records the position of each message it applies, and
    fails on the positions in ``fail_on``."""

    def handle(message: Message) -> None:
        if fail_on and message.position in fail_on:
            raise RuntimeError(f"handler refuses position {message.position}")
        seen.append(message.position)

    return listener(name, handle, attempts=attempts)


class Retries:
    """Stands in for the actor's retry_later: what it was asked to retry."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []  # (position, attempt)

    def __call__(self, envelope: Envelope, attempt: int) -> None:
        self.asked.append((envelope["position"], attempt))


def envelopes(engine: Engine, *messages: Message) -> list[Envelope]:
    """The envelopes of ``messages`` as the drain publishes them (signed)."""
    return [delivered(engine, message) for message in messages]


def delivered(engine: Engine, message: Message, **changes: Any) -> Envelope:
    """The envelope of ``message`` with ``changes``, signed as the drain signs."""
    return engine.keys.signed({**envelope_of(message, engine.registry), **changes})


def apply(engine: Engine, spec: ListenerSpec, *messages: Message, **options: Any) -> list[Outcome]:
    """Deliver ``messages`` to ``spec`` through the engine's one entry point, in
    the order a batch is applied (so the outcomes come in that order too)."""
    ordered = sorted(messages, key=batch_order)
    if len(ordered) > 1 and not options.get("final"):
        options.setdefault("retry_later", Retries())
    return engine.apply(spec, envelopes(engine, *ordered), **options)


def position_of(engine: Engine, listener_name: str, stream: str) -> int | None:
    """The position ``listener_name`` applied in ``stream``; None if it has none there."""
    return engine.positions.positions_of(listener_name, [stream]).get(stream)


def held_positions(listener_name: str) -> list[int]:
    query = HeldMessage.select().where(HeldMessage.listener == listener_name)
    return sorted(row.position for row in query)


def warehouse_handler(runtime: Runtime, kind: str) -> Handler:
    """One of the handlers listeners.yaml names ("view", "notifier", "archive"),
    built with its slice's services as the runtime builds it."""
    if kind == "view":
        return ProductsView(runtime.services["warehouse"])
    if kind == "notifier":
        return LowQuantityNotifier(runtime.services["warehouse"])
    return Archive(runtime.services["messaging"])


def warehouse_listener(runtime: Runtime, kind: str) -> ListenerSpec:
    """A listener of its own around one of the warehouse's handlers, bound to everything."""
    return listener(unique_name(kind), warehouse_handler(runtime, kind))


def effect_on(kind: str, sku: str) -> int:
    """What a warehouse listener ("view", "notifier", "archive") holds of ``sku``:
    its quantity, or how many of its messages were archived."""
    if kind == "view":
        return products.quantity_of(sku)
    if kind == "notifier":
        return low_quantity.quantity_of(sku)
    return ArchivedMessage.select().where(ArchivedMessage.stream == sku).count()


def record_queries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, each query string the database sends to PostgreSQL: one
    per round trip (recorded at peewee's own ``execute_sql``, under the service's)."""
    queries: list[str] = []
    send = peewee.PostgresqlDatabase.execute_sql

    def recording(self: peewee.Database, sql: str, params: object = None) -> object:
        queries.append(sql)
        return send(self, sql, params)

    monkeypatch.setattr(peewee.PostgresqlDatabase, "execute_sql", recording)
    return queries
