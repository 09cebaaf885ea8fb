"""A message on RabbitMQ: the plain Avro binary as the body, the rest in the
AMQP properties. Written by the publisher, read by the listeners' consumer.

The id, type and correlation id are the AMQP ``message_id``, ``type`` and
``correlation_id``; the schema version, stream, position, predecessors and
the drain's signature (``messaging.signing``) are headers; the routing key
is ``<type>.v<version>``.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pika

from ..signing import SIGNATURE, MessageKeys
from ..storage.outbox import OutboxRow
from ..tracing import TRACEPARENT, TRACESTATE

#: AMQP content type that marks a body as one of our Avro messages.
AVRO_CONTENT_TYPE = "application/avro"


def properties_of(row: OutboxRow, keys: MessageKeys) -> pika.BasicProperties:
    """The properties of ``row``'s message, signed with ``keys``."""
    headers: dict[str, Any] = {"schema_version": row.schema_version}
    # The fields as the consumer reads them back (``envelope_of_delivery``).
    signed: dict[str, Any] = {
        "id": row.message_id,
        "type": row.type,
        "schema_version": row.schema_version,
        "correlation_id": row.correlation_id,
    }
    if row.stream is not None:
        signed["stream"] = headers["stream"] = row.stream
        signed["position"] = headers["position"] = row.position
        if row.predecessors:
            signed["predecessors"] = headers["predecessors"] = json.loads(row.predecessors)
    headers[SIGNATURE] = keys.sign(signed, bytes(row.payload))
    if row.traceparent is not None:  # not signed: it decides nothing (messaging/tracing.py)
        headers[TRACEPARENT] = row.traceparent
        if row.tracestate:
            headers[TRACESTATE] = row.tracestate
    return pika.BasicProperties(
        content_type=AVRO_CONTENT_TYPE,
        delivery_mode=2,
        message_id=row.message_id,
        type=row.type,
        correlation_id=row.correlation_id,
        headers=headers,
    )


def envelope_of_delivery(properties: pika.BasicProperties, body: bytes) -> dict[str, Any] | None:
    """The envelope of a delivery the publisher published, else None (a Dramatiq message)."""
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
        SIGNATURE: headers.get(SIGNATURE),
        TRACEPARENT: headers.get(TRACEPARENT),
        TRACESTATE: headers.get(TRACESTATE),
    }
