"""The recorders' tables and handlers (see the package)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable

import peewee

from cqrs_warehouse.messaging import Message, Model


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class WatchedMessage(Model):
    id = peewee.BigAutoField()
    message_id = peewee.CharField(max_length=36)
    type = peewee.CharField(max_length=255)
    schema_version = peewee.IntegerField()
    payload = peewee.TextField()
    stream = peewee.CharField(max_length=255, null=True)
    position = peewee.BigIntegerField(null=True)
    predecessors = peewee.TextField(null=True)
    received_at = peewee.DateTimeField(default=_utcnow)

    class Meta:
        table_name = "recorders_watched_messages"


class ReceivedShipment(Model):
    message_id = peewee.CharField(max_length=36, primary_key=True)
    type = peewee.CharField(max_length=255)
    sku = peewee.CharField(max_length=64)
    quantity = peewee.BigIntegerField(null=True)

    class Meta:
        table_name = "recorders_received_shipments"


class RefusedSku(Model):
    listener = peewee.CharField(max_length=100)
    sku = peewee.CharField(max_length=64)

    class Meta:
        table_name = "recorders_refused_skus"
        primary_key = peewee.CompositeKey("listener", "sku")


class PickyApplied(Model):
    id = peewee.BigAutoField()
    listener = peewee.CharField(max_length=100)
    message_id = peewee.CharField(max_length=36)
    sku = peewee.CharField(max_length=64)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "recorders_picky_applied"


def watch(message: Message) -> None:
    WatchedMessage.create(
        message_id=message.id,
        type=message.type,
        schema_version=message.schema_version,
        payload=json.dumps(message.payload, sort_keys=True),
        stream=message.stream,
        position=message.position,
        predecessors=None if message.predecessors is None else json.dumps(message.predecessors),
    )


def watched_messages(message_type: str | None = None) -> list[Message]:
    """What ``watch`` received, in the order it received it."""
    query = WatchedMessage.select().order_by(WatchedMessage.id)
    if message_type is not None:
        query = query.where(WatchedMessage.type == message_type)
    return [
        Message(
            id=row.message_id,
            type=row.type,
            schema_version=row.schema_version,
            payload=json.loads(row.payload),
            stream=row.stream,
            position=row.position,
            predecessors=None if row.predecessors is None else json.loads(row.predecessors),
        )
        for row in query
    ]


def record_shipment(message: Message) -> None:
    ReceivedShipment.create(
        message_id=message.id,
        type=message.type,
        sku=message.payload["sku"],
        quantity=message.payload.get("quantity"),
    )


def _refusing(listener: str) -> Callable[[Message], None]:
    def handle(message: Message) -> None:
        sku = message.payload["sku"]
        refused = RefusedSku.select().where(
            (RefusedSku.listener == listener) & (RefusedSku.sku == sku)
        )
        if refused.exists():
            raise RuntimeError(f"{listener} refuses SKU {sku}")
        PickyApplied.create(
            listener=listener, message_id=message.id, sku=sku, quantity=message.payload["quantity"]
        )

    handle.__name__ = handle.__qualname__ = listener
    return handle


picky = _refusing("picky")
picky_all = _refusing("picky_all")
picky_other = _refusing("picky_other")
