"""The composition root: ``build(settings)`` makes everything a process runs.

Every process kind calls it (the gunicorn app, the dramatiq worker module,
``cqrs-warehouse serve``, the CLI) and so do the tests; collaborators are
handed to each part here, explicitly. Nothing connects while building:
connections are made on first use. What the API or the CLI may not need
(listeners.yaml's handlers, the broker, the actors) is built on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from .messaging.consistency import Consistency
from .messaging.dead_letters import DeadLetters
from .messaging.drain import Drain, Publisher
from .messaging.errors import ConfigurationError, MessagingError, RoutingConfigError
from .messaging.handler import FunctionHandler, Handler
from .messaging.inprocess import InProcessTransport
from .messaging.listening import Engine
from .messaging.listening.actors import (
    DatabaseConnections,
    declare_drain_actor,
    declare_listener_actor,
)
from .messaging.message import routing_key_for
from .messaging.metrics import Metrics
from .messaging.outbox import Outbox
from .messaging.rabbitmq import RabbitmqTransport
from .messaging.rabbitmq.routes import Routes
from .messaging.retention import Retention
from .messaging.routing import RoutingConfig, load_routing
from .messaging.routing_lint import Finding, check
from .messaging.schemas import SchemaRegistry
from .messaging.signing import MessageKeys
from .messaging.storage import Storage, Timeouts, open_storage
from .messaging.tracing import Tracing
from .messaging.transport import Transport
from .messaging.waking import DrainWaker
from .settings import Settings, read_settings
from .slices import CORE, Slice, SliceContext, load_slices, owner

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        slices: tuple[Slice, ...],
        *,
        wrap_publisher: Callable[[Publisher], Publisher] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        #: Traces, from the OTEL_* variables (off unless OTEL_TRACES_EXPORTER is set).
        self.tracing = tracing if tracing is not None else Tracing.from_env()
        self.slices = slices
        self.wrap_publisher = wrap_publisher
        self.storage: Storage = open_storage(
            settings.database_url,
            notify_channel=settings.notify_channel,
            timeouts=Timeouts(
                connect=settings.database_connect_timeout,
                statement=settings.database_statement_timeout,
                lock=settings.database_lock_timeout,
            ),
        )
        self.database = self.storage.database
        self.bind_models()
        self.registry = SchemaRegistry(
            settings.schemas_dir, *(s.schemas for s in slices if s.schemas is not None)
        )
        self.metrics = Metrics()
        self.outbox = Outbox(
            self.database,
            self.storage.outbox,
            self.registry,
            wake_drain=self._wake_drain,
            tracing=self.tracing,
        )
        self.dead_letters = DeadLetters(self.database, self.storage.positions)
        self.services = {
            slice_.name: slice_.build(
                SliceContext(
                    settings=read_settings(slice_.settings) if slice_.settings else None,
                    database=self.database,
                    outbox=self.outbox,
                    registry=self.registry,
                )
            )
            for slice_ in slices
        }

    def bind_models(self) -> None:
        """Point every slice's models at this runtime's database, in their store's
        schema. peewee binds a model class, not an instance: the last runtime
        built in a process (or bound again) is the one its models use."""
        for slice_ in self.slices:
            for store in slice_.stores:
                for model in store.models:
                    model._meta.schema = store.schema if self.database.has_schemas else None
                    model.bind(self.database)

    # --- listeners --------------------------------------------------------

    @cached_property
    def routing(self) -> RoutingConfig:
        """listeners.yaml, with each handler built (raises RoutingConfigError)."""
        routing = load_routing(self.settings.listeners_config, build=self._handler)
        for spec in routing.listeners:
            for message_type, version in spec.reads.items():
                try:
                    self.registry.schema(message_type, version)
                except MessagingError as error:
                    raise ConfigurationError(
                        f"listener {spec.name}: its handler reads {message_type} v{version}: "
                        f"{error}"
                    ) from error
        return routing

    def check_routing(self) -> list[Finding]:
        """listeners.yaml against the known event types (``routing_lint.check``):
        raises RoutingConfigError on what cannot work, logs and returns the
        warnings. The workers call it before they start."""
        routing = self.routing
        keys = [routing_key_for(t, v) for t, v in self.registry.available()]
        findings = check(routing, keys)
        errors = [f"{routing.source}: {f.where}: {f.problem}" for f in findings if f.error]
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise RoutingConfigError(errors[0] + more)
        for finding in findings:
            logger.warning("%s: %s: %s", routing.source, finding.where, finding.problem)
        return findings

    @property
    def routes(self) -> Routes | None:
        """What the service declared on RabbitMQ (None on the in-process broker)."""
        transport = self.transport
        return transport.routes if isinstance(transport, RabbitmqTransport) else None

    def _handler(self, named: Any) -> Handler:
        if not (isinstance(named, type) and issubclass(named, Handler)):
            return FunctionHandler(named)
        slice_ = owner(self.slices, named.__module__) or CORE
        return named(self.services[slice_.name])  # type: ignore[call-arg]

    @cached_property
    def consistency(self) -> Consistency:
        return Consistency(
            self.database,
            self.storage.positions,
            self.storage.signals,
            channel=self.settings.applied_channel,
            issued=self.storage.outbox.last_position,
            max_waiting=self.settings.consistency_max_waiting,
            listeners=[s.name for s in self.routing.listeners if s.handler.read_your_writes],
        )

    @cached_property
    def message_keys(self) -> MessageKeys:
        """MESSAGE_KEY's keys, else a random key of this runtime: enough where
        the drain and the listeners are in one process (the in-process
        broker); on RabbitMQ, ``broker`` refuses to run without MESSAGE_KEY."""
        return self.settings.message_keys or MessageKeys.random()

    def require_message_key(self) -> None:
        """Raise ConfigurationError if this process would publish or consume
        listener messages on RabbitMQ without MESSAGE_KEY: no other process
        could verify what it signs, nor it what they sign."""
        if self.settings.broker_url is not None and self.settings.message_keys is None:
            raise ConfigurationError(
                "MESSAGE_KEY is not set: with BROKER_URL, the workers (and `serve`) sign the "
                "messages they publish and apply only messages signed with it; set it to the "
                "same secret of at least 32 characters in each of them"
            )

    @cached_property
    def engine(self) -> Engine:
        return Engine(
            outbox=self.outbox,
            positions=self.storage.positions,
            registry=self.registry,
            dead_letters=self.dead_letters,
            metrics=self.metrics,
            consistency=self.consistency,
            keys=self.message_keys,
        )

    # --- the broker and the actors ------------------------------------------

    @cached_property
    def transport(self) -> Transport:
        settings = self.settings
        if settings.broker_url is None:  # (``build`` allows it only when embedded)
            return InProcessTransport(self.routing, self.message_keys)
        return RabbitmqTransport(
            settings.broker_url,
            exchange=settings.prefixed(self.routing.exchange.name),
            bindings={settings.prefixed(s.name): s.bindings for s in self.routing.listeners},
            listener_queues=[settings.prefixed(s.name) for s in self.routing.listeners],
            listener_batch_size=settings.listener_batch_size,
            queue_type=settings.queue_type,
            database=self.database,
            prefix=settings.queue_prefix,
            owners={queue: name for name, queue in self.listener_queues().items()},
            source=self.routing.source,
            keys=self.message_keys,
        )

    @property
    def broker(self) -> dramatiq.Broker:
        """The broker, with every actor declared on it, to run them (the
        workers, ``serve``): refused on RabbitMQ without MESSAGE_KEY."""
        self.require_message_key()
        return self.actors.broker

    @cached_property
    def actors(self) -> _Actors:
        return _Actors(self)

    def listener_queues(self) -> dict[str, str]:
        """Each listener's queue: {listener: queue name}."""
        return {s.name: self.settings.prefixed(s.name) for s in self.routing.listeners}

    def _wake_drain(self) -> None:
        self.actors.drain_actor.send()


class _Actors:
    """The actors of every listener and of the drain, declared on the transport's
    broker with the middleware they run with; the drain and its waker."""

    def __init__(self, runtime: Runtime) -> None:
        settings, transport = runtime.settings, runtime.transport
        self.broker = broker = transport.broker
        broker.add_middleware(DatabaseConnections(runtime.database))
        broker.add_middleware(CurrentMessage())
        for middleware in transport.middleware:
            broker.add_middleware(middleware)
        self.listeners = {
            spec.name: declare_listener_actor(
                broker, spec, runtime.engine, queue_name=settings.prefixed(spec.name)
            )
            for spec in runtime.routing.listeners
        }
        publisher = transport.publisher
        if runtime.wrap_publisher is not None:
            publisher = runtime.wrap_publisher(publisher)
        self.drain = Drain(
            runtime.database,
            runtime.storage.outbox,
            publisher,
            runtime.metrics,
            batch_size=settings.drain_batch_size,
            tracing=runtime.tracing,
        )
        drain_queue = settings.prefixed("outbox_drain")
        self.retention = Retention(
            runtime.database,
            processed=settings.processed_messages_retention,
            archive=settings.archive_retention,
        )
        self.drain_actor = declare_drain_actor(broker, self.drain.run, queue_name=drain_queue)
        self.waker = DrainWaker(
            database=runtime.database,
            signals=runtime.storage.signals,
            drain=self.drain.run,
            send_to_drain_actor=self.drain_actor.send,
            drain_queue=drain_queue,
            channel=settings.notify_channel,
            sweep_interval=settings.sweep_interval,
            on_sweep=lambda: self._sweep(runtime, transport),
        )
        broker.add_middleware(self.waker)

    def _sweep(self, runtime: Runtime, transport: Transport) -> None:
        runtime.engine.resend_ready_held(transport.send)
        self.retention.prune()


def build(
    settings: Settings | None = None,
    *,
    embedded: bool = False,
    wrap_publisher: Callable[[Publisher], Publisher] | None = None,
    tracing: Tracing | None = None,
) -> Runtime:
    """The runtime of ``settings`` (default: from the environment).

    ``embedded``: may run on the in-process broker when BROKER_URL is unset
    (`cqrs-warehouse serve` and the CLI); the API and the workers may not.
    ``wrap_publisher``: wraps the drain's publisher (the fault tests crash it).
    ``tracing``: instead of the one OTEL_* make (the tests' in-memory exporter).
    """
    settings = settings or Settings.from_env()
    if settings.broker_url is None and not embedded:
        raise ConfigurationError(
            "BROKER_URL is not set. Only `cqrs-warehouse serve` can run on the in-process "
            "broker; set BROKER_URL=amqp://USER:PASSWORD@HOST:5672/ to run the API or the "
            "workers on their own."
        )
    return Runtime(
        settings, load_slices(settings.slices), wrap_publisher=wrap_publisher, tracing=tracing
    )
