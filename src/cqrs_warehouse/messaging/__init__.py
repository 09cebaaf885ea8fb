"""The messaging core: domain-free building blocks for CQRS with an outbox.

It knows nothing about warehouses. A slice uses it through what is here:

- ``Message``: what a command emits (type, schema version, Avro payload);
- ``Outbox``: ``transaction()`` and ``append()`` commit state and messages together;
- ``Handler`` (or a plain function with ``reads``): what a listener applies;
- ``Model``, ``Statement`` and ``Bulk``: tables and queries that run on
  every database the core supports;
- ``context``: the logging context of a request or a message;
- ``encode_token``: a command's consistency token (read-your-writes);
- ``testing``: outbox peeking, direct feeding, eventually-asserts.

The runtime (``cqrs_warehouse.runtime``) wires the rest: storage, schemas,
transports, the listener engine, the drain.
"""

from . import context
from .consistency import encode_token
from .errors import MessagingError
from .handler import Handler
from .message import Message, reads, routing_key_for
from .outbox import Outbox
from .storage import Bulk, Model, Statement

__all__ = [
    "Bulk",
    "Handler",
    "Message",
    "MessagingError",
    "Model",
    "Outbox",
    "Statement",
    "context",
    "encode_token",
    "reads",
    "routing_key_for",
]
