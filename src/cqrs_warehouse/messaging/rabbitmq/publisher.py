"""The drain's publisher on RabbitMQ: each message once to the topic exchange, confirmed.

RabbitMQ's bindings fan a message out to the listener queues. The channel
is in confirm mode and a batch is published at once, then waited for:
``publish`` returns once RabbitMQ has confirmed every message of the batch
(for persistent messages on durable queues, once they are written), so the
drain may let the rows go. Unlike an AMQP transaction, confirm mode routes
each message at once: listeners may receive it while RabbitMQ is still
writing it. A message RabbitMQ nacks, or a batch not confirmed in time,
fails the batch and its connection: the drain keeps its rows and publishes
them again later, on a new connection (to the first node of BROKER_URL that
accepts one).
Each message is signed with the first key of MESSAGE_KEY (``wire.properties_of``).

The exchange, every listener queue and their bindings are declared before
the first publish on a connection: RabbitMQ drops a message published
before its queues are bound.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dramatiq
import pika
import pika.exceptions

from ..errors import PublishError
from ..message import routing_key_for
from ..signing import MessageKeys
from ..storage.outbox import OutboxRow
from .topology import Topology
from .wire import properties_of

logger = logging.getLogger(__name__)


class RabbitmqPublisher:
    """Publishes on a connection of its own per thread."""

    #: Seconds a batch may wait for RabbitMQ's confirms before it fails.
    confirm_timeout = 30.0

    def __init__(self, parameters: Any, topology: Topology, keys: MessageKeys) -> None:
        self.parameters = parameters
        self.topology = topology
        self.keys = keys
        self._local = threading.local()

    def publish(
        self, rows: Sequence[OutboxRow], *, meanwhile: Callable[[], object] | None = None
    ) -> None:
        # A connection idle in this thread may have been closed by the broker
        # (missed heartbeats, a restart) without pika noticing until it is
        # used: try once more on a fresh one. Rows go only once confirmed,
        # so publishing a batch twice only makes duplicates.
        for attempt in (1, 2):
            try:
                self._publish(rows, meanwhile)
                return
            except (pika.exceptions.AMQPError, dramatiq.errors.BrokerConnectionError) as error:
                self._reset()
                if attempt == 2:
                    raise PublishError(
                        f"publishing to exchange {self.topology.exchange!r} failed: {error!r}"
                    ) from error

    def _publish(self, rows: Sequence[OutboxRow], meanwhile: Callable[[], object] | None) -> None:
        connection, channel, confirms = self._channel()
        # BlockingChannel.basic_publish flushes the socket after every
        # message and, in confirm mode, waits for its confirm; pika has no
        # public call that does neither. The channel underneath only buffers
        # the frames: the batch goes out in one write, and its confirms are
        # counted as they arrive (docs/decisions/0004-amqp-frames.md).
        buffered = channel._impl
        confirms.expect(len(rows))
        with coalesced_frames(connection):
            for row in rows:
                buffered.basic_publish(
                    exchange=self.topology.exchange,
                    routing_key=routing_key_for(row.type, row.schema_version),
                    body=bytes(row.payload),
                    properties=properties_of(row, self.keys),
                )
        if meanwhile is not None:
            # pika writes the frames to the socket only as it processes events.
            connection.process_data_events(time_limit=0)
            meanwhile()
        deadline = time.monotonic() + self.confirm_timeout
        while confirms.waiting():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._reset()  # later confirms must not count for the next batch
                raise PublishError(
                    f"RabbitMQ did not confirm {confirms.waiting()} of {len(rows)} "
                    f"messages within {self.confirm_timeout:.0f} s"
                )
            # Returns as soon as the last confirm is in (see _Confirms.on_frame).
            connection.process_data_events(time_limit=remaining)
        if confirms.refused:
            # A fresh channel for the next batch: on RabbitMQ 3.10 a channel that
            # a quorum queue nacked while it had no leader goes on nacking.
            self._reset()
            raise PublishError(
                f"RabbitMQ refused {confirms.refused} of {len(rows)} messages (nack)"
            )

    def _channel(self) -> tuple[Any, Any, _Confirms]:
        channel = getattr(self._local, "channel", None)
        if channel is not None and channel.is_open:
            return self._local.connection, channel, self._local.confirms
        self._reset()
        connection = pika.BlockingConnection(self.parameters)
        self._local.connection = connection
        channel = connection.channel()
        self.topology.declare(channel)
        confirms = _Confirms(connection)
        selected: list[Any] = []
        # (The underlying channel: BlockingChannel.confirm_delivery takes no
        # callback for the confirms, it waits for each one itself.)
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

    pika sends each frame with a send() of its own (a publish is three
    frames, an ack one) and has no option to do otherwise: this takes the
    frames where the connection hands them to its transport
    (``_adapter_emit_data``, pinned by tests/broker/test_coalesced_frames.py).
    Only for the thread that owns the connection, like any use of it.
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
