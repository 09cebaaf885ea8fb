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
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import dq_name, xq_name
from dramatiq.middleware import Retries

from ..errors import ConfigurationError
from .consumer import REQUEUE, ListenerConsumer

#: Arguments of every queue of QUEUE_TYPE=quorum. RabbitMQ 4 gives a quorum
#: queue a delivery limit of 20 unless one is declared (3.x none); -1, which
#: 4 reads as no limit, makes 3.10 drop a message on its first return. The
#: service dead-letters by itself, after its own attempts, so the limit is
#: one no message reaches (docs/decisions/0023-quorum-queues.md).
QUORUM = {"x-queue-type": "quorum", "x-delivery-limit": 2**63 - 1}


class ListenerRoutingBroker(RabbitmqBroker):
    def __init__(
        self,
        *,
        listener_batch_size: int = 1,
        listener_queues: Sequence[str] = (),
        queue_type: str = "classic",
        **kwargs: Any,
    ) -> None:
        """``listener_queues``: the listeners' queues in listeners.yaml's order;
        each prefers one worker process (``consumer.consumer_priority``);
        ``queue_type``: QUEUE_TYPE, what every queue is declared as."""
        super().__init__(**kwargs)
        self.listener_batch_size = listener_batch_size
        self.listener_queues = list(listener_queues)
        self.queue_type = queue_type

    @property
    def consumer_class(self) -> type:
        return ListenerConsumer

    def queue_owner(self, queue_name: str) -> str | None:
        """The actor that consumes ``queue_name`` alone (a listener's), else None."""
        owners = [a.actor_name for a in self.actors.values() if a.queue_name == queue_name]
        return owners[0] if len(owners) == 1 else None

    # Classic queues are declared without ``x-queue-version``: the server's
    # default, or what an operator's policy sets (docs/decisions/0005-queue-version.md).
    # Dramatiq's only hooks for how a queue is declared are these private
    # methods (pinned by tests/broker/test_queue_version.py and test_quorum_queues.py).

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        """A queue's and its delay queue's arguments (Dramatiq's, and QUEUE_TYPE's)."""
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        return {**arguments, **QUORUM} if self.queue_type == "quorum" else arguments

    def _declare_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_queue, queue_name, queue_name)

    def _declare_dq_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(super()._declare_dq_queue, queue_name, dq_name(queue_name))

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self._declare_as_it_is(self._declare_xq, queue_name, xq_name(queue_name))

    def _declare_xq(self, queue_name: str) -> Any:
        if self.queue_type == "classic":
            return super()._declare_xq_queue(queue_name)
        # Dramatiq's dead-letter queue (its arguments), of the queue type.
        arguments = {"x-message-ttl": DEAD_MESSAGE_TTL, "x-queue-type": "quorum"}
        return self.channel.queue_declare(
            queue=xq_name(queue_name), durable=True, arguments=arguments
        )

    def _declare_as_it_is(self, declare: Any, queue_name: str, declared: str) -> Any:
        """``declare(queue_name)``, which declares the queue ``declared``; one
        that exists with another queue version is kept, with a warning; one of
        another queue type is a ConfigurationError that says how to migrate.

        RabbitMQ refuses to redeclare a queue with other arguments, and a
        queue's version cannot change once it holds messages, so a queue an
        earlier release declared as version 2 is used as it is rather than
        failing every start. Any other difference of arguments still fails.
        """
        try:
            return declare(queue_name)
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code == 406 and "x-queue-type" in error.reply_text:
                del self.channel  # the broker closed it
                raise QueueTypeMismatch(declared, self.queue_type, error.reply_text) from None
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


class QueueTypeMismatch(ConfigurationError):
    """A queue exists with another type than QUEUE_TYPE: RabbitMQ cannot change
    a queue's type, nor redeclare it as another."""

    def __init__(self, queue: str, queue_type: str, refusal: str) -> None:
        super().__init__(
            f"queue {queue} exists with another type than QUEUE_TYPE={queue_type} "
            f"(RabbitMQ: {refusal}). A queue's type cannot change: drain it and delete it, "
            'or use a new QUEUE_PREFIX (README, "Changing QUEUE_TYPE")'
        )
        self.queue = queue


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
