"""Listeners whose handler fails on a condition the tests control, to make
dead letters the way production does (for the operational tests).

Each refuses the SKUs listed for it in ``ops_refused_skus`` and records what
it applied in ``ops_picky_applied``. Both tables live in the default schema;
the tests create them (``create_tables``).
"""

from __future__ import annotations

from collections.abc import Callable

import peewee

from cqrs_warehouse.messaging.database import BaseModel
from cqrs_warehouse.messaging.message import Message


class RefusedSku(BaseModel):
    listener = peewee.CharField(max_length=100)
    sku = peewee.CharField(max_length=64)

    class Meta:
        table_name = "ops_refused_skus"
        primary_key = peewee.CompositeKey("listener", "sku")


class PickyApplied(BaseModel):
    id = peewee.BigAutoField()
    listener = peewee.CharField(max_length=100)
    message_id = peewee.CharField(max_length=36)
    sku = peewee.CharField(max_length=64)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "ops_picky_applied"


def create_tables() -> None:
    RefusedSku.create_table(safe=True)
    PickyApplied.create_table(safe=True)


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
