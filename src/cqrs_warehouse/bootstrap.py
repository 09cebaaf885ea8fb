"""Builds the running service from Settings: database, broker, actors, outbox.

Used by the worker module, the web app factory and the CLI. Nothing here
runs at import time; ``bootstrap`` opens nothing either: connections are
made on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import peewee
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage, Retries, TimeLimit

from .messaging import listeners as listeners_module
from .messaging import outbox as outbox_module
from .messaging.broker import EventRoutingRabbitmqBroker
from .messaging.database import is_postgres, open_database
from .messaging.drain import Drain
from .messaging.errors import ConfigurationError, MessagingError
from .messaging.listeners import (
    build_drain_actor,
    build_listener_actor,
    listener_actor_name,
    resend_ready_held,
)
from .messaging.middleware import DatabaseConnections, DrainWaker
from .messaging.outbox import Outbox
from .messaging.routing import RoutingConfig, load_routing
from .messaging.schemas import SchemaRegistry
from .messaging.transport import (
    InProcessPublisher,
    Publisher,
    RabbitmqPublisher,
    send_to_actor,
)
from .settings import Settings
from .warehouse.processors import low_quantity
from .warehouse.views.products import handle_message as products_handler

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    database: peewee.Database
    broker: dramatiq.Broker
    routing: RoutingConfig
    registry: SchemaRegistry
    outbox: Outbox
    drain: Drain
    drain_actor: dramatiq.Actor
    listener_actors: dict[str, dramatiq.Actor]
    waker: DrainWaker
    in_process_publisher: InProcessPublisher | None
    #: The listener that keeps the products view (read-your-writes waits on it).
    view_listener: str | None

    @property
    def in_process(self) -> bool:
        return isinstance(self.broker, StubBroker)


def bootstrap(settings: Settings, *, allow_in_process_broker: bool = False) -> Runtime:
    if settings.broker_url is None and not allow_in_process_broker:
        raise ConfigurationError(
            "BROKER_URL is not set. Only `cqrs-warehouse serve` can run on the in-process "
            "broker; set BROKER_URL=amqp://USER:PASSWORD@HOST:5672/ to run the API or the "
            "workers on their own."
        )
    routing = load_routing(settings.listeners_config)
    db = open_database(settings.database_url)
    registry = SchemaRegistry(settings.schemas_dir)
    for spec in routing.listeners:
        for message_type, version in spec.reads.items():
            try:
                registry.schema(message_type, version)
            except MessagingError as error:
                raise ConfigurationError(
                    f"listener {spec.name}: its handler reads {message_type} v{version}: {error}"
                ) from error
    low_quantity.configure(threshold=settings.low_quantity_threshold)

    broker: dramatiq.Broker
    if settings.broker_url is None:
        broker = StubBroker()
    else:
        broker = EventRoutingRabbitmqBroker(
            url=settings.broker_url,
            confirm_delivery=True,
            listener_batch_size=settings.listener_batch_size,
            listener_queues=[settings.queue_name(spec.name) for spec in routing.listeners],
            # Of Dramatiq's default middleware, the two the actors use: the
            # others (age limits, callbacks, pipelines, shutdown notices)
            # serve options no actor here sets, and each runs on every message.
            middleware=[TimeLimit(), Retries()],
        )
    broker.add_middleware(DatabaseConnections())
    broker.add_middleware(CurrentMessage())
    dramatiq.set_broker(broker)

    actor_names = {spec.name: listener_actor_name(spec) for spec in routing.listeners}
    publisher: Publisher
    in_process: InProcessPublisher | None = None
    send: Callable[[str, dict[str, Any]], None]
    if isinstance(broker, StubBroker):
        publisher = in_process = InProcessPublisher(broker, routing, actor_names)
        send = in_process.send_durably
    else:
        publisher = RabbitmqPublisher(
            broker,
            exchange=settings.queue_name(routing.exchange.name),
            bindings={settings.queue_name(spec.name): spec.bindings for spec in routing.listeners},
        )

        def send(listener: str, envelope: dict[str, Any]) -> None:
            send_to_actor(broker, actor_names[listener], envelope)

    listener_actors = {
        spec.name: build_listener_actor(
            broker,
            spec,
            queue_name=settings.queue_name(spec.name),
            registry=registry,
            on_done=in_process.delivered if in_process is not None else None,
        )
        for spec in routing.listeners
    }
    drain = Drain(publisher, batch_size=settings.drain_batch_size)
    drain_queue = settings.queue_name("outbox_drain")
    drain_actor = build_drain_actor(broker, drain.run, queue_name=drain_queue)

    def nudge() -> None:
        drain_actor.send()

    outbox = Outbox(
        registry,
        notify_channel=settings.notify_channel,
        nudge=None if is_postgres(db) else nudge,
    )
    outbox_module.install(outbox)
    view_listener = next(
        (spec.name for spec in routing.listeners if spec.handler is products_handler), None
    )
    listeners_module.announce_applied(
        settings.applied_channel, {view_listener} if view_listener else set()
    )
    waker = DrainWaker(
        nudge,
        drain=drain.run,
        drain_queue=drain_queue,
        on_sweep=lambda: resend_ready_held(send),
        database_url=settings.database_url,
        notify_channel=settings.notify_channel,
        sweep_interval=settings.sweep_interval,
    )
    broker.add_middleware(waker)
    return Runtime(
        settings=settings,
        database=db,
        broker=broker,
        routing=routing,
        registry=registry,
        outbox=outbox,
        drain=drain,
        drain_actor=drain_actor,
        listener_actors=listener_actors,
        waker=waker,
        in_process_publisher=in_process,
        view_listener=view_listener,
    )
