"""The Dramatiq broker on RabbitMQ: Dramatiq's own, with the listeners' consumer.

RabbitMQ routes one published message through the topic exchange to every
bound listener queue. Dramatiq's consumer expects each body to be a Dramatiq
message naming its actor, and no Dramatiq broker consumes an exchange's
fan-out, so this broker's consumer (``consumer.py``) turns our Avro
deliveries into Dramatiq messages for the actor that owns the queue they
arrived on. Everything else (acks, retries, delays, reconnects) stays
Dramatiq's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pika.exceptions
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.common import dq_name
from dramatiq.middleware import Retries

from .consumer import REQUEUE, ListenerConsumer


class ListenerRoutingBroker(RabbitmqBroker):
    def __init__(
        self,
        *,
        listener_batch_size: int = 1,
        listener_queues: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """``listener_queues``: the listeners' queues in listeners.yaml's order;
        each prefers one worker process (``consumer.consumer_priority``)."""
        super().__init__(**kwargs)
        self.listener_batch_size = listener_batch_size
        self.listener_queues = list(listener_queues)

    @property
    def consumer_class(self) -> type:
        return ListenerConsumer

    def queue_owner(self, queue_name: str) -> str | None:
        """The actor that consumes ``queue_name`` alone (a listener's), else None."""
        owners = [a.actor_name for a in self.actors.values() if a.queue_name == queue_name]
        return owners[0] if len(owners) == 1 else None

    # Queues are declared without ``x-queue-version``: the server's default,
    # or what an operator's policy sets (docs/decisions/0005-queue-version.md).
    # Dramatiq's only hooks for how a queue is declared are these two private
    # methods (pinned by tests/broker/test_queue_version.py).

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_queue, queue_name, queue_name)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_dq_queue, queue_name, dq_name(queue_name))

    def _declare_as_it_is(self, declare: Any, queue_name: str, declared: str) -> Any:
        """``declare(queue_name)``, which declares the queue ``declared``; one
        that exists with another queue version is kept, with a warning.

        RabbitMQ refuses to redeclare a queue with other arguments, and a
        queue's version cannot change once it holds messages, so a queue an
        earlier release declared as version 2 is used as it is rather than
        failing every start. Any other difference of arguments still fails.
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


class RequeueUnlessRetried(Retries):
    """Dramatiq's Retries, except when the retry cannot be enqueued (RabbitMQ
    refuses it, the connection is gone): Dramatiq logs that, swallows it and
    acknowledges the message, which is then lost. Here the message is marked
    (``consumer.REQUEUE``) and its consumer hands it back to RabbitMQ, which
    delivers it again; listeners skip what they had applied."""

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        try:
            super().after_process_message(broker, message, result=result, exception=exception)
        except Exception:
            self.logger.error(
                "Could not enqueue the retry of message %r; RabbitMQ will deliver it again.",
                message.message_id,
                exc_info=True,
            )
            message.options[REQUEUE] = True
