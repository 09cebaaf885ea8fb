"""The envelope: a message as it travels inside Dramatiq (JSON, the Avro payload
in base64), and its decoding into a ``Message``. Used by the transports, the
listener engine and the tools that apply stored messages again.

On RabbitMQ the body is the plain Avro binary and the rest travels in the
AMQP properties (``rabbitmq.wire``); a listener's consumer turns a delivery
into an envelope, and held, dead-lettered and archived messages are stored
with what makes one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from .errors import PayloadDecodeError
from .message import Message
from .schemas import SchemaRegistry


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


def message_from_envelope(
    envelope: dict[str, Any],
    registry: SchemaRegistry,
    reads: Mapping[str, int] | None = None,
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


def envelope_of(message: Message, registry: SchemaRegistry) -> dict[str, Any]:
    """The envelope of ``message`` as the drain would publish it (encoded and validated)."""
    return {
        "id": message.id,
        "type": message.type,
        "schema_version": message.schema_version,
        "payload": base64.b64encode(
            registry.encode(message.type, message.schema_version, message.payload)
        ).decode("ascii"),
        "stream": message.stream,
        "position": message.position,
        "predecessors": message.predecessors,
        "correlation_id": message.correlation_id,
    }
