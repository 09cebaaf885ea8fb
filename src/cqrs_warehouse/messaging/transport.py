"""How the drain hands messages to the broker, and how listeners get them back.

``RabbitmqPublisher`` publishes each message once to the topic exchange with
its routing key and waits for RabbitMQ's confirms; RabbitMQ's bindings fan it
out to the listener queues. ``InProcessPublisher`` does the same fan-out in
Python for the in-process broker. Both only return once every message is
accepted, so the drain may then delete its rows.

On the wire (RabbitMQ) a message is the plain Avro binary as the body, with
its id, type and schema version in the AMQP properties. Inside Dramatiq (a
listener actor's argument, retries) it travels as an ``envelope`` dict with
the payload in base64, since Dramatiq's messages are JSON.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import dramatiq
import peewee
import pika
import pika.exceptions

from .database import BaseModel
from .errors import PayloadDecodeError, PublishError
from .message import Message, routing_key_for
from .routing import RoutingConfig
from .schemas import SchemaRegistry

logger = logging.getLogger(__name__)

#: An outbox row to publish: an OutboxRecord, or a row with its attributes
#: (id, message_id, type, schema_version, payload, stream, position,
#: correlation_id, predecessors) as the drain claims them on PostgreSQL.
OutboxRow = Any

#: AMQP content type that marks a body as one of our Avro messages.
AVRO_CONTENT_TYPE = "application/avro"


def envelope_from_record(record: Any) -> dict[str, Any]:
    """The envelope of a stored message: an outbox, held or archived row.

    A held row's payload is in the version its listener reads; its
    ``written_version`` (the version it was routed by) travels along.
    """
    envelope = {
        "id": record.message_id,
        "type": record.type,
        "schema_version": record.schema_version,
        "payload": base64.b64encode(bytes(record.payload)).decode("ascii"),
        "stream": record.stream,
        "position": record.position,
        "predecessors": json.loads(record.predecessors) if record.predecessors else None,
        "correlation_id": record.correlation_id,
    }
    written_version = getattr(record, "written_version", None)
    if written_version is not None:
        envelope["written_version"] = written_version
    return envelope


def envelope_from_amqp(properties: pika.BasicProperties, body: bytes) -> dict[str, Any] | None:
    """The envelope of a delivery published by RabbitmqPublisher, else None."""
    if properties.content_type != AVRO_CONTENT_TYPE or not properties.type:
        return None
    headers = properties.headers or {}
    return {
        "id": properties.message_id,
        "type": properties.type,
        "schema_version": headers.get("schema_version"),
        "payload": base64.b64encode(body).decode("ascii"),
        "stream": headers.get("stream"),
        "position": headers.get("position"),
        "predecessors": headers.get("predecessors"),
        "correlation_id": properties.correlation_id,
    }


def message_from_envelope(
    envelope: dict[str, Any],
    registry: SchemaRegistry,
    reads: dict[str, int] | None = None,
) -> Message:
    """Decode and validate; raises a SchemaError for anything malformed.

    ``reads`` maps types to the version the receiving handler reads; such a
    message is resolved into that version.
    """
    try:
        message_type = envelope["type"]
        version = envelope["schema_version"]
        data = base64.b64decode(envelope["payload"], validate=True)
        message_id = envelope["id"]
    except (KeyError, TypeError, ValueError) as error:
        raise PayloadDecodeError(f"malformed envelope: {error!r}") from error
    if not isinstance(message_type, str) or not isinstance(version, int) or not message_id:
        raise PayloadDecodeError(f"malformed envelope: type {message_type!r} v{version!r}")
    stream, position = envelope.get("stream"), envelope.get("position")
    predecessors = envelope.get("predecessors")
    if stream is not None and not (
        isinstance(stream, str)
        and isinstance(position, int)
        and position >= 1
        and (predecessors is None or _is_position_map(predecessors))
    ):
        raise PayloadDecodeError(
            f"malformed envelope: stream {stream!r} position {position!r} "
            f"predecessors {predecessors!r}"
        )
    reader_version = (reads or {}).get(message_type, version)
    correlation_id = envelope.get("correlation_id")
    routed_version = envelope.get("written_version")
    if not isinstance(routed_version, int) or isinstance(routed_version, bool):
        routed_version = version
    return Message(
        id=str(message_id),
        type=message_type,
        schema_version=reader_version,
        written_version=routed_version if routed_version != reader_version else None,
        payload=registry.decode(message_type, version, data, reader_version=reader_version),
        stream=stream,
        position=position,
        predecessors=predecessors,
        # (A held message comes back in its reader's version: not as written.)
        encoded=data if version == routed_version else None,
        correlation_id=correlation_id if isinstance(correlation_id, str) else None,
    )


def _is_position_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in value.items()
    )


class Publisher(Protocol):
    def publish(self, records: Sequence[OutboxRow]) -> Callable[[], None] | None:
        """Publish every record; return only once the broker has accepted them all.

        May return an action to run once the drain's transaction has committed.
        """


def send_to_actor(broker: dramatiq.Broker, actor_name: str, envelope: dict[str, Any]) -> None:
    """Enqueue ``envelope`` for one listener actor, bypassing the exchange."""
    actor = broker.get_actor(actor_name)
    broker.enqueue(actor.message_with_options(args=(envelope,), message_id=str(envelope["id"])))


class Delivery(BaseModel):
    """A message handed to a listener on the in-process broker, until it is done.

    The in-process broker keeps its queues in memory; these rows, written in
    the drain's transaction, are what survives a crash: on start-up every
    remaining delivery is handed over again (listeners skip what they had
    already applied).
    """

    id = peewee.BigAutoField()
    listener = peewee.CharField(max_length=100)
    envelope = peewee.TextField()

    class Meta:
        table_name = "messaging_deliveries"
        slice_schema = "messaging"


class InProcessPublisher:
    """Routes in Python and enqueues on the in-process (stub) broker."""

    def __init__(self, broker: dramatiq.Broker, routing: RoutingConfig, actors: dict[str, str]):
        self.broker = broker
        self.routing = routing
        self.actors = actors  # listener name -> actor name

    def publish(self, records: Sequence[OutboxRow]) -> Callable[[], None]:
        deliveries = []
        for record in records:
            key = routing_key_for(record.type, record.schema_version)
            for spec in self.routing.listeners_for(key):
                envelope = envelope_from_record(record)
                delivery = Delivery.create(listener=spec.name, envelope=json.dumps(envelope))
                deliveries.append((spec.name, {**envelope, "delivery": delivery.id}))

        def hand_over() -> None:
            for listener, envelope in deliveries:
                self.send(listener, envelope)

        return hand_over

    def send(self, listener: str, envelope: dict[str, Any]) -> None:
        send_to_actor(self.broker, self.actors[listener], envelope)

    def send_durably(self, listener: str, envelope: dict[str, Any]) -> None:
        """``send``, recorded as a delivery first (call inside a transaction)."""
        plain = {k: v for k, v in envelope.items() if k != "delivery"}
        delivery = Delivery.create(listener=listener, envelope=json.dumps(plain))
        self.send(listener, {**plain, "delivery": delivery.id})

    def delivered(self, envelope: dict[str, Any]) -> None:
        delivery = envelope.get("delivery")
        if isinstance(delivery, int):
            Delivery.delete().where(Delivery.id == delivery).execute()

    def redeliver_pending(self) -> int:
        """Hand over again every delivery a previous run left unfinished."""
        pending = list(Delivery.select().order_by(Delivery.id))
        for delivery in pending:
            self.send(delivery.listener, {**json.loads(delivery.envelope), "delivery": delivery.id})
        return len(pending)


class RabbitmqPublisher:
    """Publishes to the topic exchange on a connection of its own per thread.

    The channel is in confirm mode, and a batch is published at once, then
    waited for: ``publish`` returns once RabbitMQ has confirmed every message
    of the batch (for persistent messages on durable queues, once they are
    written), so the drain may delete their rows. Unlike an AMQP transaction,
    which holds the messages back until its commit has written them, confirm
    mode routes each message to its queues at once: the listeners may
    receive it while RabbitMQ is still writing it, which takes the write off
    the path from a command to its listeners. A message RabbitMQ nacks, or a
    batch not confirmed in time, fails the batch: the drain keeps its rows
    and publishes them again later (listeners recognise what they already
    applied).

    pika's BlockingChannel only waits for confirms one message at a time
    (measured here: 1,600 against 8,000 messages/s for batches of 500), so
    the batch goes through the channel underneath it (see ``_publish``).

    Declares the exchange, every listener queue (through the Dramatiq broker,
    so the queue arguments match the ones its consumers declare) and their
    bindings before the first publish on a connection: a message published
    before its queues are bound would be dropped by RabbitMQ.
    """

    #: Seconds a batch may wait for RabbitMQ's confirms before it fails.
    confirm_timeout = 30.0

    def __init__(
        self,
        broker: Any,  # EventRoutingRabbitmqBroker
        exchange: str,
        bindings: dict[str, tuple[str, ...]],  # queue name -> patterns
    ) -> None:
        self.broker = broker
        self.exchange = exchange
        self.bindings = bindings
        self._local = threading.local()

    def publish(self, records: Sequence[OutboxRow]) -> None:
        # A connection idle in this thread may have been closed by the broker
        # (missed heartbeats, a restart) without pika noticing until it is
        # used: try once more on a fresh one. Rows are only deleted once
        # confirmed, so publishing a batch twice only makes duplicates.
        for attempt in (1, 2):
            try:
                self._publish(records)
                return
            except (pika.exceptions.AMQPError, dramatiq.errors.BrokerConnectionError) as error:
                self._reset()
                if attempt == 2:
                    raise PublishError(
                        f"publishing to exchange {self.exchange!r} failed: {error!r}"
                    ) from error

    def _publish(self, records: Sequence[OutboxRow]) -> None:
        connection, channel, confirms = self._channel()
        # pika's BlockingChannel.basic_publish flushes the socket after every
        # message and, in confirm mode, waits for its confirm. The channel
        # underneath only buffers the frames: the whole batch goes out in one
        # write, and its confirms are counted as they arrive (RabbitMQ acks
        # several at once). pika has no public call for either.
        buffered = channel._impl
        confirms.expect(len(records))
        with coalesced_frames(connection):
            for record in records:
                buffered.basic_publish(
                    exchange=self.exchange,
                    routing_key=routing_key_for(record.type, record.schema_version),
                    body=bytes(record.payload),
                    properties=_properties(record),
                )
        deadline = time.monotonic() + self.confirm_timeout
        while confirms.waiting():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._reset()  # later confirms must not count for the next batch
                raise PublishError(
                    f"RabbitMQ did not confirm {confirms.waiting()} of {len(records)} "
                    f"messages within {self.confirm_timeout:.0f} s"
                )
            # Returns as soon as the last confirm is in (see _Confirms.on_frame).
            connection.process_data_events(time_limit=remaining)
        if confirms.refused:
            raise PublishError(
                f"RabbitMQ refused {confirms.refused} of {len(records)} messages (nack)"
            )

    def _channel(self) -> tuple[Any, Any, _Confirms]:
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return self._local.connection, channel, self._local.confirms
        self._reset()
        connection = pika.BlockingConnection(self.broker.parameters)
        self._local.connection = connection
        channel = connection.channel()
        declare_topology(self.broker, channel, self.exchange, self.bindings)
        confirms = _Confirms(connection)
        selected: list[Any] = []
        channel._impl.confirm_delivery(
            ack_nack_callback=confirms.on_frame, callback=selected.append
        )
        deadline = time.monotonic() + self.confirm_timeout
        while not selected and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        if not selected:
            raise PublishError("RabbitMQ did not turn on confirm mode")
        self._local.channel, self._local.confirms = channel, confirms
        return connection, channel, confirms

    def _reset(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = self._local.channel = self._local.confirms = None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:
                logger.debug("closing a broken publisher connection failed", exc_info=True)


class _Confirms:
    """Counts a confirm-mode channel's confirms for the batch being published.

    RabbitMQ numbers a channel's messages from 1 and confirms them with
    Basic.Ack or Basic.Nack, one at a time or, with ``multiple``, every one
    up to a number, in any order across queues.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.published = 0  # the number of the channel's last message
        self.unconfirmed: set[int] = set()
        self.refused = 0

    def expect(self, count: int) -> None:
        first = self.published + 1
        self.published += count
        self.unconfirmed = set(range(first, self.published + 1))
        self.refused = 0

    def waiting(self) -> int:
        return len(self.unconfirmed)

    def on_frame(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            done = {tag for tag in self.unconfirmed if tag <= method.delivery_tag}
        else:
            done = {method.delivery_tag} & self.unconfirmed
        self.unconfirmed -= done
        if isinstance(method, pika.spec.Basic.Nack):
            self.refused += len(done)
        if not self.unconfirmed:
            # Ends the publisher's process_data_events at once: a timer that
            # is due makes it return (a confirm alone does not).
            self.connection.call_later(0, _nothing)


def _nothing() -> None:
    pass


@contextlib.contextmanager
def coalesced_frames(connection: pika.BlockingConnection) -> Iterator[None]:
    """Within the block, the AMQP frames pika writes on ``connection`` go to the
    socket together, in one write, when the block ends.

    pika hands each frame to its transport on its own, and the transport
    sends each with a send() of its own: a publish is three frames, an ack
    one, so a batch of 500 publishes was 1,500 system calls (a fifth of the
    drain's busy time, profiled). pika has no option for it: this takes the
    frames where the connection hands them to its transport
    (``_adapter_emit_data``) and hands them over joined. Only for the
    thread that owns the connection, like any use of it.
    """
    impl = connection._impl
    frames: list[bytes] = []
    impl._adapter_emit_data = frames.append  # an attribute of this instance only
    try:
        yield
    finally:
        del impl._adapter_emit_data  # pika's own method again
        if frames and impl.is_open:
            impl._adapter_emit_data(b"".join(frames))


def declare_topology(
    broker: Any, channel: Any, exchange: str, bindings: dict[str, tuple[str, ...]]
) -> None:
    """Declare the exchange, the listener queues and their bindings (idempotent)."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    for queue_name, patterns in bindings.items():
        broker.declare_queue(queue_name, ensure=True)
        for pattern in patterns:
            channel.queue_bind(queue=queue_name, exchange=exchange, routing_key=pattern)


def _properties(record: OutboxRow) -> pika.BasicProperties:
    headers: dict[str, Any] = {"schema_version": record.schema_version}
    if record.stream is not None:
        headers["stream"] = record.stream
        headers["position"] = record.position
        if record.predecessors:
            headers["predecessors"] = json.loads(record.predecessors)
    return pika.BasicProperties(
        content_type=AVRO_CONTENT_TYPE,
        delivery_mode=2,
        message_id=record.message_id,
        type=record.type,
        correlation_id=record.correlation_id,
        headers=headers,
    )
