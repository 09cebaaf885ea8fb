"""The envelope: a message as it travels inside Dramatiq (JSON, the Avro payload
in base64), and its decoding into a ``Message``. Used by the transports, the
listener engine and the tools that apply stored messages again.

On RabbitMQ the body is the plain Avro binary and the rest travels in the
AMQP properties (``rabbitmq.wire``); a listener's consumer turns a delivery
into an envelope, and held, dead-lettered and archived messages are stored
with what makes one.

Every field has a limit (``LIMITS``, the sizes of the tables that keep
them; ``MAX_PAYLOAD_BYTES`` for the payload): an envelope over one is
malformed, a poison message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from .errors import PayloadDecodeError
from .message import Message
from .schemas import SchemaRegistry
from .tracing import fitted

#: The longest text of each field, in characters: the columns that keep them.
LIMITS = {"id": 36, "type": 255, "stream": 255, "correlation_id": 64}
#: Most predecessors a message names (one per routing key of its stream),
#: and the longest routing key.
MAX_PREDECESSORS = 64
MAX_ROUTING_KEY = 255
#: The largest Avro payload: 1 MiB.
MAX_PAYLOAD_BYTES = 1 << 20
#: Largest position (the tables' BIGINT) and schema version (INTEGER).
_MAX_POSITION = (1 << 63) - 1
_MAX_VERSION = (1 << 31) - 1


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
    if getattr(record, "traceparent", None) is not None:  # (messaging/tracing.py)
        envelope["traceparent"] = record.traceparent
        envelope["tracestate"] = record.tracestate
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
        encoded = envelope["payload"]
        message_id = envelope["id"]
        if len(encoded) > _MAX_PAYLOAD_TEXT:
            raise ValueError(f"a payload over {MAX_PAYLOAD_BYTES} bytes")
        data = base64.b64decode(encoded, validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise PayloadDecodeError(f"malformed envelope: {error!r}"[:300]) from error
    if not (isinstance(message_type, str) and _is_count(version, _MAX_VERSION) and version >= 1):
        raise PayloadDecodeError(
            f"malformed envelope: type {_shown(message_type)} v{_shown(version)}"
        )
    if not (isinstance(message_id, str) and message_id):
        raise PayloadDecodeError(f"malformed envelope: id {_shown(message_id)}")
    stream, position = envelope.get("stream"), envelope.get("position")
    predecessors = envelope.get("predecessors")
    correlation_id = envelope.get("correlation_id")
    if not isinstance(correlation_id, str):
        correlation_id = None
    _check_limits(message_id, message_type, stream, correlation_id, len(data))
    if stream is not None and not (
        isinstance(stream, str)
        and _is_count(position)
        and position >= 1
        and (predecessors is None or _is_position_map(predecessors))
    ):
        raise PayloadDecodeError(
            f"malformed envelope: stream {_shown(stream)} position {_shown(position)} "
            f"predecessors {_shown(predecessors)}"
        )
    reader_version = (reads or {}).get(message_type, version)
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
        correlation_id=correlation_id,
        traceparent=fitted(envelope.get("traceparent"), "traceparent"),
        tracestate=fitted(envelope.get("tracestate"), "tracestate"),
    )


#: The length of the base64 text of a payload of MAX_PAYLOAD_BYTES.
_MAX_PAYLOAD_TEXT = 4 * -(-MAX_PAYLOAD_BYTES // 3)


def _check_limits(
    message_id: str, message_type: str, stream: Any, correlation_id: str | None, size: int
) -> None:
    """Raise PayloadDecodeError for a field over its limit (it names the field, not the value)."""
    for name, value in (
        ("id", message_id),
        ("type", message_type),
        ("stream", stream),
        ("correlation_id", correlation_id),
    ):
        if isinstance(value, str) and len(value) > LIMITS[name]:
            raise PayloadDecodeError(
                f"malformed envelope: its {name} has {len(value)} characters "
                f"(at most {LIMITS[name]})"
            )
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadDecodeError(
            f"malformed envelope: a payload of {size} bytes (at most {MAX_PAYLOAD_BYTES})"
        )


def _is_count(value: Any, maximum: int = _MAX_POSITION) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value <= maximum


def _shown(value: Any) -> str:
    """``value`` for an error text: its repr, at most 80 characters of it."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python prints
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_position_map(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= MAX_PREDECESSORS
        and all(
            isinstance(k, str) and len(k) <= MAX_ROUTING_KEY and _is_count(v)
            for k, v in value.items()
        )
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
        "traceparent": message.traceparent,
        "tracestate": message.tracestate,
    }
