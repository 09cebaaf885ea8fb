"""A user-defined listener, outside the project's package: it shows that a
listener of one's own is an entry in listeners.yaml pointing at one's module.

It records what it receives in its own table, which the end-to-end tests
create and read.
"""

from __future__ import annotations

import peewee

from cqrs_warehouse.messaging.database import BaseModel
from cqrs_warehouse.messaging.message import Message


class ReceivedMessage(BaseModel):
    message_id = peewee.CharField(max_length=36, primary_key=True)
    type = peewee.CharField(max_length=255)
    sku = peewee.CharField(max_length=64)
    quantity = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "e2e_custom_listener_received"


def record(message: Message) -> None:
    ReceivedMessage.create(
        message_id=message.id,
        type=message.type,
        sku=message.payload["sku"],
        quantity=message.payload.get("quantity"),
    )
