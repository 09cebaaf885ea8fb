"""The consumer of a listener's queue: deliveries in batches, applied in its own thread.

Batches: Dramatiq hands an actor one message per call, and a listener that
commits once per message is bound by its commits. So the consumer puts
every Avro delivery RabbitMQ has already sent it (up to the broker's
``listener_batch_size``) into one Dramatiq message whose arguments are
their envelopes, and acks them all when the actor is done; the engine
applies them in one transaction. It never waits for a batch to fill: an
idle queue still hands over each message at once. No Dramatiq or pika API
batches deliveries, hence this consumer.

In place: Dramatiq's consumer thread puts each message on a work queue for
a worker thread, which hands the ack back to the consumer thread's
connection; for a listener's deliveries those hand-offs cost more than
applying a small batch (docs/decisions/0007-in-place-consumer.md). So the
consumer thread processes its own batches, through Dramatiq's
``WorkerThread.process_message`` (the same middleware: retries, the current
message, database connections, metrics), and acks them on its own connection
at once. Dramatiq messages on the same queue (retries, resends) still go
through the work queue.

A message whose retry Dramatiq could not enqueue (``broker.RequeueUnlessRetried``
marks it) is handed back to RabbitMQ instead of acknowledged: Dramatiq would
acknowledge it, and it would be lost.
"""

from __future__ import annotations

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
from dramatiq.brokers.rabbitmq import _RabbitmqConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.worker import ConsumerThread, WorkerThread

from .publisher import coalesced_frames
from .wire import envelope_of_delivery

#: More than any number of worker processes (see ``consumer_priority``).
_RANKS = 1000
#: Set in a message's options when its retry could not be enqueued: its
#: deliveries go back to RabbitMQ (requeued) instead of being acknowledged.
REQUEUE = "cqrs_requeue"


def consumer_priority(queues: Sequence[str], queue_name: str, process: int | None) -> int | None:
    """The ``x-priority`` of worker process ``process``'s consumer of
    ``queue_name``: 0 in the process the queue prefers, lower in the others;
    None for a queue that is not a listener's or a process of unknown index.

    Listener k prefers worker process k modulo the number of processes, which
    is not known here: ranking the processes after k, cyclically, lands it
    there whatever the number (docs/decisions/0006-listener-spread.md).
    """
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


class _Batch(MessageProxy):
    """One Dramatiq message standing for one or more RabbitMQ deliveries."""

    def __init__(self, redelivered: bool, tags: list[int], message: dramatiq.Message) -> None:
        super().__init__(message)
        self.redelivered = redelivered
        self.tags = tags


class ListenerConsumer(_RabbitmqConsumer):
    """Dramatiq's RabbitMQ consumer (a private class: Dramatiq has no public hook
    for how deliveries become messages; pinned by tests/broker/test_listener_batches.py)."""

    def __init__(self, broker: Any, queue_name: str, prefetch: int, timeout: int) -> None:
        """``broker``: a ``broker.ListenerRoutingBroker``."""
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
        deliveries = _Batch(redelivered, tags, message)
        if self.in_place is None:
            return deliveries
        self.in_place.process(deliveries)
        return None  # to Dramatiq's consumer thread: nothing for the work queue

    def _envelope(self, delivery: Any) -> dict[str, Any] | None:
        if self.owner is None or delivery is None or delivery[0] is None:
            return None
        return envelope_of_delivery(delivery[1], delivery[2])

    def _waiting(self) -> bool:
        """Whether a delivery can be read without waiting for RabbitMQ."""
        if self.channel.get_waiting_message_count():
            return True
        # Take in what has reached the socket meanwhile, without blocking.
        self.connection.process_data_events(time_limit=0)
        return bool(self.channel.get_waiting_message_count())

    def ack(self, message: Any) -> None:
        if message.options.get(REQUEUE):
            return self._requeue(message)
        if not isinstance(message, _Batch):
            return super().ack(message)
        self._settle(message, partial(self._ack_tags, message.tags))

    def nack(self, message: Any) -> None:
        if not isinstance(message, _Batch):
            return super().nack(message)
        self._settle(message, partial(self._nack_tags, message.tags, requeue=False))

    def _requeue(self, message: Any) -> None:
        """Hand ``message``'s deliveries back to RabbitMQ, which delivers them again."""
        if isinstance(message, _Batch):
            self._settle(message, partial(self._nack_tags, message.tags, requeue=True))
            return
        # A Dramatiq message: as Dramatiq's nack, but requeued.
        try:
            self.known_tags.remove(message._tag)
        except KeyError:
            self.logger.warning("Failed to requeue message: not in known tags.")
            return
        try:
            self.connection.add_callback_threadsafe(
                partial(self.channel.basic_nack, message._tag, requeue=True)
            )
        except pika.exceptions.AMQPError as error:
            raise ConnectionClosed(error) from None

    def _settle(self, message: _Batch, action: Any) -> None:
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
        # One write for the batch's acks (BlockingChannel.basic_ack flushes
        # after each). Not one ack with ``multiple``: it could also settle a
        # Dramatiq message whose ack a worker thread has queued for this
        # thread, and RabbitMQ closes a channel that acks a tag twice.
        with coalesced_frames(self.connection):
            for tag in tags:
                self.channel._impl.basic_ack(tag)
        self.connection.process_data_events(time_limit=0)

    def _nack_tags(self, tags: list[int], *, requeue: bool) -> None:
        with coalesced_frames(self.connection):
            for tag in tags:
                self.channel._impl.basic_nack(tag, requeue=requeue)
        self.connection.process_data_events(time_limit=0)


class _InPlace:
    """Processes a consumer's messages in its own thread, as a worker thread would:
    a Dramatiq WorkerThread that is never started, whose ``process_message`` runs
    the middleware and the actor, then settles the message (a public method of
    a class Dramatiq does not document for reuse; pinned by
    tests/broker/test_listener_batches.py)."""

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
