"""The messaging core: domain-free building blocks for CQRS with an outbox.

It knows nothing about warehouses. A slice uses it through:

- ``Message``: what a command emits (type, schema version, Avro payload);
- ``outbox.transaction()`` and ``outbox.append()``: commit state and messages together;
- listeners.yaml (``routing``): which listener receives which routing keys;
- ``testing``: outbox peeking, direct feeding, eventually-asserts, a watcher.

``cqrs_warehouse.bootstrap`` wires the rest (schemas, broker, drain, actors).
"""

from . import outbox
from .errors import MessagingError
from .message import Message, routing_key_for

__all__ = ["Message", "MessagingError", "outbox", "routing_key_for"]
