"""The Dramatiq brokers the service runs on. Used by bootstrap only.

RabbitMQ routes one published message through the topic exchange to every
bound listener queue, with a single body. Dramatiq's consumer expects that
body to be a Dramatiq message naming its actor, and no Dramatiq broker
consumes from an exchange fan-out, so ``EventRoutingRabbitmqBroker``'s
consumer turns our Avro deliveries into a Dramatiq message for the actor
that owns the queue they arrived on. Everything else (acks, retries, delays,
reconnects) stays Dramatiq's own.

Batches: Dramatiq hands an actor one message per call, and a listener that
commits once per message is bound by its commits. So the consumer puts
every Avro delivery that RabbitMQ has already sent it (up to
``listener_batch_size``) into one Dramatiq message whose arguments are their
envelopes, and acks them all when the actor is done; the listener applies
them in one transaction (``listeners.run_listener_batch``). It never waits
for a batch to fill: an idle queue still hands over each message at once.
No Dramatiq or pika API batches deliveries, hence this consumer.

In place: Dramatiq's consumer thread puts each message on a work queue for
one of its worker threads, which processes it and hands the ack back to the
consumer thread's connection. For a listener's deliveries those two
hand-offs between threads cost more than applying a small batch (measured
on 2 cores: about 2 ms of the 5 ms from a command to its listeners), so the
consumer thread processes its own batches: through Dramatiq's
``WorkerThread.process_message``, with the same middleware (retries, the
current message, database connections, metrics), and acks them on its own
connection at once. Dramatiq messages on the same queue (retries, resends)
still go through the work queue. While a batch is applied the queue's
consumer reads nothing more, which is what a batch waits for anyway.

Spread: each listener queue prefers one worker process (a consumer
priority, see ``consumer_priority``), so that a command's deliveries to its
listeners do not queue up for one interpreter.
"""

from __future__ import annotations

import copy
import multiprocessing
import re
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import dramatiq
import pika
import pika.exceptions
from dramatiq.broker import MessageProxy
from dramatiq.brokers.rabbitmq import RabbitmqBroker, _RabbitmqConsumer
from dramatiq.common import dq_name
from dramatiq.errors import ConnectionClosed
from dramatiq.worker import ConsumerThread, WorkerThread

from .transport import coalesced_frames, envelope_from_amqp


class EventRoutingRabbitmqBroker(RabbitmqBroker):
    def __init__(
        self,
        *,
        listener_batch_size: int = 1,
        listener_queues: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """``listener_queues``: the listeners' queues in listeners.yaml's order;
        each prefers one worker process (``consumer_priority``)."""
        super().__init__(**kwargs)
        self.listener_batch_size = listener_batch_size
        self.listener_queues = list(listener_queues)

    @property
    def consumer_class(self) -> type:
        return _EventRoutingConsumer

    # Queues are declared without ``x-queue-version``: the server's default
    # (classic queues of version 1 before RabbitMQ 4.0, version 2 from then
    # on), or what an operator's policy sets. Declaring version 2 was tried:
    # on RabbitMQ 3.10 it stores persistent messages more cheaply, but delays
    # each delivery to a consumer by about 0.7 ms (a persistent message to a
    # durable queue, measured here: 1.5 ms from publish to consumer against
    # 0.8 ms with version 1), which cost the service 1.4-2.6 ms of its 100
    # commands/s latency, and it gained nothing end to end (a 100,000 event
    # backlog: 43.4 s against 42.7 s with version 1).

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_queue, queue_name, queue_name)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_dq_queue, queue_name, dq_name(queue_name))

    def _declare_as_it_is(self, declare: Any, queue_name: str, declared: str) -> Any:
        """``declare(queue_name)``, which declares the queue ``declared``; one
        that exists with another queue version is kept.

        Releases before this one declared version 2. RabbitMQ refuses to
        redeclare a queue with other arguments, and the version of a queue
        cannot change once it holds messages, so such a queue is used as it
        is (a warning says how to change it) rather than failing every start.
        Any other difference of arguments still fails.
        """
        try:
            return declare(queue_name)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != 406 or "x-queue-version" not in error.reply_text:
                raise
            refusal = error.reply_text
        del self.channel  # the broker closed it
        self.logger.warning(
            "Queue %s exists with another x-queue-version (%s); it is used as it is. "
            "To change its version, apply a queue-version policy or delete the queue "
            "once it is empty.",
            declared,
            refusal,
        )
        return self.channel.queue_declare(queue=declared, passive=True)

    def queue_owner(self, queue_name: str) -> str | None:
        owners = [a.actor_name for a in self.actors.values() if a.queue_name == queue_name]
        return owners[0] if len(owners) == 1 else None


# Each listener queue prefers one worker process. Every worker process
# consumes every queue, and RabbitMQ hands a queue's deliveries to its
# consumers in turn, so a command's deliveries to the three listeners often
# landed in one process (half of them, measured), where the listeners' threads
# take turns on one interpreter: the third waited for the Python of the two
# others, about 0.8 ms. With consumer priorities, listener k's consumer in
# worker process k (modulo the number of processes) ranks first, and RabbitMQ
# delivers to the others only while that one has its prefetch full (under
# load) or is gone. The listeners of a command then spread over the
# processes (measured at 100 commands/s on 2 cores: the slowest listener's
# p50 from 3.1-3.4 ms to 2.9-3.0 ms). The number of processes is not known
# here: ranking the processes after k, cyclically, lands listener k on
# process k mod N whatever N is.
_RANKS = 1000  # more than any number of worker processes


def consumer_priority(queues: Sequence[str], queue_name: str, process: int | None) -> int | None:
    """The ``x-priority`` of worker process ``process``'s consumer of
    ``queue_name``: 0 in the process the queue prefers, lower in the others;
    None for a queue that is not a listener's or a process of unknown index."""
    if process is None or queue_name not in queues:
        return None
    return -((process - queues.index(queue_name)) % _RANKS)


def worker_process_index() -> int | None:
    """0, 1, ... for the worker processes of ``dramatiq -p N``; None elsewhere.

    Dramatiq's CLI starts its worker processes first, unnamed, so Python
    names them "Process-1", "Process-2", ... in that order (the documented
    default name of a parent's n-th child; "SpawnProcess-1" and the like from
    a start method's own context). Dramatiq passes the index to no one else.
    """
    match = re.fullmatch(r"\w*Process-(\d+)", multiprocessing.current_process().name)
    return int(match.group(1)) - 1 if match else None


class _Deliveries(MessageProxy):
    """One Dramatiq message standing for one or more RabbitMQ deliveries."""

    def __init__(self, redelivered: bool, tags: list[int], message: dramatiq.Message) -> None:
        super().__init__(message)
        self.redelivered = redelivered
        self.tags = tags


class _EventRoutingConsumer(_RabbitmqConsumer):
    def __init__(
        self, broker: EventRoutingRabbitmqBroker, queue_name: str, prefetch: int, timeout: int
    ) -> None:
        self.owner = broker.queue_owner(queue_name)
        self.batch_size = broker.listener_batch_size if self.owner is not None else 1
        if self.batch_size > 1:
            # Room for two batches per queue: one being applied while the
            # next one arrives (Dramatiq's default is two messages per thread).
            prefetch = max(prefetch, 2 * self.batch_size)
        super().__init__(broker, queue_name, prefetch, timeout)
        priority = consumer_priority(broker.listener_queues, queue_name, worker_process_index())
        if priority is not None:
            # Dramatiq's consumer takes no consumer arguments: consume again,
            # with the priority, before anything was read.
            self.channel.cancel()
            self.iterator = self.channel.consume(
                queue_name, inactivity_timeout=timeout / 1000, arguments={"x-priority": priority}
            )
        self.iterator = _Lookahead(self.iterator)
        # Dramatiq opens a consumer in the consumer thread that reads it.
        self.thread = threading.current_thread()
        self.in_place = (
            _InPlace(broker, self.thread)
            if self.owner is not None and isinstance(self.thread, ConsumerThread)
            else None
        )

    def __next__(self) -> Any:
        delivery = self.iterator.peek()
        envelope = self._envelope(delivery)
        if envelope is None:
            # A timeout, an error, or a Dramatiq message (a retry, a resend,
            # the drain's wake-up): Dramatiq's own consumer code takes it.
            return super().__next__()
        envelopes, tags, redelivered = [], [], False
        while envelope is not None:
            method = next(self.iterator)[0]
            envelopes.append(envelope)
            tags.append(method.delivery_tag)
            redelivered = redelivered or bool(method.redelivered)
            if len(envelopes) >= self.batch_size or not self._waiting():
                break
            # Anything but one of our deliveries ends the batch, and is left
            # for the next call.
            envelope = self._envelope(self.iterator.peek())
        assert self.owner is not None  # (only an owned queue's deliveries have envelopes)
        first = str(envelopes[0]["id"] or "")
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=self.owner,
            args=tuple(envelopes),
            kwargs={},
            options={},
            # Unique while the batch lives: its first message's id, and how
            # many came with it.
            message_id=first if len(envelopes) == 1 else f"{first}+{len(envelopes) - 1}",
        )
        self.known_tags.update(tags)
        deliveries = _Deliveries(redelivered, tags, message)
        if self.in_place is None:
            return deliveries
        self.in_place.process(deliveries)
        return None  # to Dramatiq's consumer thread: nothing for the work queue

    def _envelope(self, delivery: Any) -> dict[str, Any] | None:
        if self.owner is None or delivery is None or delivery[0] is None:
            return None
        return envelope_from_amqp(delivery[1], delivery[2])

    def _waiting(self) -> bool:
        """Whether a delivery can be read without waiting for RabbitMQ."""
        if self.channel.get_waiting_message_count():
            return True
        # Take in what has reached the socket meanwhile, without blocking.
        self.connection.process_data_events(time_limit=0)
        return bool(self.channel.get_waiting_message_count())

    def ack(self, message: Any) -> None:
        if not isinstance(message, _Deliveries):
            return super().ack(message)
        self._settle(message, partial(self._ack_tags, message.tags))

    def nack(self, message: Any) -> None:
        if not isinstance(message, _Deliveries):
            return super().nack(message)
        self._settle(message, partial(self._nack_tags, message.tags))

    def _settle(self, message: _Deliveries, action: Any) -> None:
        if not set(message.tags) <= self.known_tags:
            # Delivered on a connection since replaced: RabbitMQ redelivers them.
            self.logger.warning(
                "Failed to settle %d deliveries: not in known tags.", len(message.tags)
            )
            return
        self.known_tags.difference_update(message.tags)
        if threading.current_thread() is not self.thread:
            try:
                self.connection.add_callback_threadsafe(action)
            except pika.exceptions.AMQPError as error:
                raise ConnectionClosed(error) from None
            return
        # Processed in place: this thread owns the connection. If it is gone,
        # RabbitMQ redelivers the deliveries (the listener recognises them),
        # and this thread's next read reconnects; raising would have Dramatiq
        # retry the ack on the dead connection every 5 s instead.
        try:
            action()
        except pika.exceptions.AMQPError as error:
            self.logger.warning(
                "Failed to settle %d deliveries (%r); RabbitMQ redelivers them.",
                len(message.tags),
                error,
            )

    def _ack_tags(self, tags: list[int]) -> None:
        # BlockingChannel.basic_ack flushes the socket after every ack (a
        # fifth of a listener's CPU under a backlog, profiled). The channel
        # under it only queues the frames, each to be sent on its own:
        # ``coalesced_frames`` makes them one write, which
        # process_data_events sends. (A single ack with ``multiple`` could
        # also settle a Dramatiq message whose ack a worker thread has queued
        # for this thread: RabbitMQ closes a channel that acks a tag twice.)
        with coalesced_frames(self.connection):
            for tag in tags:
                self.channel._impl.basic_ack(tag)
        self.connection.process_data_events(time_limit=0)

    def _nack_tags(self, tags: list[int]) -> None:
        with coalesced_frames(self.connection):
            for tag in tags:
                self.channel._impl.basic_nack(tag, requeue=False)
        self.connection.process_data_events(time_limit=0)


class _InPlace:
    """Processes a consumer's messages in its own thread, as a worker thread would.

    A Dramatiq WorkerThread that is never started: its ``process_message``
    runs the middleware and the actor, then has the consumer thread ack or
    reject the message (``post_process_message``).
    """

    def __init__(self, broker: dramatiq.Broker, consumer_thread: ConsumerThread) -> None:
        self.worker = WorkerThread(
            broker=broker,
            consumers={consumer_thread.queue_name: consumer_thread},
            work_queue=_NoWorkQueue(),  # type: ignore[arg-type]
            worker_timeout=consumer_thread.worker_timeout,
        )

    def process(self, message: MessageProxy) -> None:
        self.worker.process_message(message)


class _NoWorkQueue:
    """What ``WorkerThread.process_message`` reports a message done to."""

    def task_done(self) -> None:
        pass


class _Lookahead:
    """A consumer's deliveries, with the next one readable before it is taken.

    An error met while reading ahead is raised again by ``next``, where
    Dramatiq's consumer code turns it into its ConnectionClosed.
    """

    def __init__(self, deliveries: Any) -> None:
        self._deliveries = deliveries
        self._ahead: list[tuple[Any, BaseException | None]] = []

    def __iter__(self) -> _Lookahead:
        return self

    def __next__(self) -> Any:
        if self._ahead:
            delivery, error = self._ahead.pop()
            if error is not None:
                raise error
            return delivery
        return next(self._deliveries)

    def peek(self) -> Any:
        """The next delivery, left in place; None if reading it failed."""
        if not self._ahead:
            try:
                self._ahead.append((next(self._deliveries), None))
            except Exception as error:
                self._ahead.append((None, error))
        return self._ahead[0][0]


def _short_lived(parameters: Any) -> pika.BlockingConnection:
    params = parameters[0] if isinstance(parameters, list) else parameters
    quick = copy.copy(params)
    quick.connection_attempts = 1
    quick.socket_timeout = 2
    quick.blocked_connection_timeout = 2
    return pika.BlockingConnection(quick)


def ping(parameters: Any) -> None:
    """Raise unless RabbitMQ accepts a connection now."""
    _short_lived(parameters).close()


def queue_depths(parameters: Any, queues: dict[str, str]) -> dict[str, int]:
    """Messages ready in each queue plus its delay queue: {label: count}.

    Declares passively, so a queue that does not exist yet counts 0 and is
    not created.
    """
    connection = _short_lived(parameters)
    try:
        depths = {}
        for label, queue in queues.items():
            total = 0
            for name in (queue, dq_name(queue)):
                channel = connection.channel()
                try:
                    total += channel.queue_declare(queue=name, passive=True).method.message_count
                except pika.exceptions.ChannelClosedByBroker:
                    continue  # not declared yet: nothing waits there
                if channel.is_open:
                    channel.close()
            depths[label] = total
        return depths
    finally:
        connection.close()
