"""One Dramatiq actor per listener in listeners.yaml, plus the drain actor.

Used by bootstrap. A listener actor decodes its message through the Avro
registry (a message that fails is refused and never reaches the handler),
skips a message its bindings do not match, and runs the handler inside a
transaction that also records the message id: a redelivered message the
listener already applied is acknowledged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dramatiq
import peewee

from . import outbox
from .database import BaseModel
from .errors import SchemaError
from .message import Message
from .routing import ListenerSpec
from .schemas import SchemaRegistry
from .transport import message_from_envelope

logger = logging.getLogger(__name__)

DRAIN_ACTOR = "drain_outbox"


class ProcessedMessage(BaseModel):
    """Which message ids each listener has applied. Owned by the messaging core."""

    listener = peewee.CharField(max_length=100)
    message_id = peewee.CharField(max_length=36)

    class Meta:
        table_name = "messaging_processed_messages"
        primary_key = peewee.CompositeKey("listener", "message_id")


def apply_message(spec: ListenerSpec, message: Message) -> bool:
    """Run ``spec``'s handler on ``message`` once; False if it was already applied."""
    if not spec.accepts(message.routing_key):
        logger.warning(
            "listener %s skipped %s (%s): none of its bindings match",
            spec.name,
            message.id,
            message.routing_key,
        )
        return False
    with outbox.transaction():
        # The insert waits on a concurrent delivery of the same id until it
        # commits, then conflicts: the handler runs once per listener and id.
        inserted = (
            ProcessedMessage.insert(listener=spec.name, message_id=message.id)
            .on_conflict_ignore()
            .as_rowcount()
            .execute()
        )
        if not inserted:
            logger.info("listener %s skipped %s: already applied", spec.name, message.id)
            return False
        spec.handler(message)
    return True


def listener_actor_name(spec: ListenerSpec) -> str:
    return f"listener.{spec.name}"


def build_listener_actor(
    broker: dramatiq.Broker, spec: ListenerSpec, *, queue_name: str, registry: SchemaRegistry
) -> dramatiq.Actor:
    def run(envelope: dict[str, Any]) -> None:
        apply_message(spec, message_from_envelope(envelope, registry))

    run.__name__ = run.__qualname__ = f"listen_{spec.name}"
    return dramatiq.actor(
        broker=broker,
        actor_name=listener_actor_name(spec),
        queue_name=queue_name,
        max_retries=spec.retry.max_attempts - 1,
        min_backoff=int(spec.retry.min_delay * 1000) or 1,
        max_backoff=int(spec.retry.max_delay * 1000) or 1,
        # A message that does not fit its schema fails the same way every
        # time: it is not retried.
        throws=(SchemaError,),
    )(run)


def build_drain_actor(
    broker: dramatiq.Broker, run_drain: Callable[[], int], *, queue_name: str
) -> dramatiq.Actor:
    def drain_outbox() -> None:
        run_drain()

    return dramatiq.actor(
        broker=broker,
        actor_name=DRAIN_ACTOR,
        queue_name=queue_name,
        # The rows stay in the outbox when a drain fails; the next wake-up or
        # sweep publishes them, so a short retry is all this needs.
        max_retries=2,
        min_backoff=200,
        max_backoff=2000,
    )(drain_outbox)
