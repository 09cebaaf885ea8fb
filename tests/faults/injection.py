"""Publishing messages straight to RabbitMQ, the way the drain does, for the
duplicate, reorder and poison cases.

A well-formed message is built as an outbox row (``OutboxRow``, what the
drain takes) and sent with the publisher's own AMQP properties
(``messaging.rabbitmq.wire.properties_of``): the Avro
binary body, content type application/avro, type, message_id, correlation_id
and the schema_version/stream/position/predecessors headers, signed with the
tests' MESSAGE_KEY as the drain signs. Poison messages take the same shape
(signed too) with something wrong in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pika

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.message import routing_key_for
from cqrs_warehouse.messaging.rabbitmq.wire import AVRO_CONTENT_TYPE, properties_of
from cqrs_warehouse.messaging.signing import SIGNATURE, MessageKeys
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.messaging.storage.outbox import OutboxRow
from tests.support.environment import TEST_MESSAGE_KEY
from tests.support.services import BROKER_URL

#: The keys of the tests' service processes.
KEYS = MessageKeys.parse("MESSAGE_KEY", TEST_MESSAGE_KEY)


def record_from_archive(row: ArchivedMessage) -> OutboxRow:
    """An already delivered message, as the outbox held it."""
    return OutboxRow(
        id=0,
        message_id=row.message_id,
        type=row.type,
        schema_version=row.schema_version,
        payload=bytes(row.payload),
        stream=row.stream,
        position=row.position,
        predecessors=row.predecessors,
        correlation_id=row.correlation_id,
    )


def copy_of(record: OutboxRecord) -> OutboxRow:
    """A detached copy of an outbox row (read it before the drain deletes it)."""
    return OutboxRow(
        id=int(record.id),
        message_id=record.message_id,
        type=record.type,
        schema_version=record.schema_version,
        payload=bytes(record.payload),
        stream=record.stream,
        position=record.position,
        predecessors=record.predecessors,
        correlation_id=record.correlation_id,
    )


@dataclass
class Poison:
    """A message no listener can read; ``why`` names what is wrong with it."""

    why: str
    message_id: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties


def poison(
    why: str,
    *,
    message_type: str,
    version: Any,
    body: bytes,
    stream: str | None = None,
    position: Any = None,
) -> Poison:
    message_id = str(uuid.uuid4())
    correlation_id = f"poison-{why.replace(' ', '-')}"
    headers: dict[str, Any] = {"schema_version": version}
    if stream is not None:
        headers["stream"] = stream
        headers["position"] = position
    signed = {"id": message_id, "type": message_type, "correlation_id": correlation_id}
    headers[SIGNATURE] = KEYS.sign({**signed, **headers}, body)
    return Poison(
        why=why,
        message_id=message_id,
        routing_key=f"{message_type}.v{version}",
        body=body,
        properties=pika.BasicProperties(
            content_type=AVRO_CONTENT_TYPE,
            delivery_mode=2,
            message_id=message_id,
            type=message_type,
            correlation_id=correlation_id,
            headers=headers,
        ),
    )


class Publisher:
    """A pika connection with publisher confirms; every publish must be routed."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.sent = 0

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.connection.is_open:
            self.connection.close()

    def records(self, records: Iterable[OutboxRow], *, queue: str | None = None) -> int:
        """Publish ``records`` to the exchange, or straight to ``queue``."""
        count = 0
        for record in records:
            self._publish(
                exchange="" if queue else self.exchange,
                routing_key=queue or routing_key_for(record.type, record.schema_version),
                body=bytes(record.payload),
                properties=properties_of(record, KEYS),
            )
            count += 1
        return count

    def poison(self, messages: Iterable[Poison]) -> int:
        count = 0
        for message in messages:
            self._publish(
                exchange=self.exchange,
                routing_key=message.routing_key,
                body=message.body,
                properties=message.properties,
            )
            count += 1
        return count

    def _publish(
        self, *, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
    ) -> None:
        # mandatory: an unroutable message raises UnroutableError instead of vanishing.
        self.channel.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=properties,
            mandatory=True,
        )
        self.sent += 1
