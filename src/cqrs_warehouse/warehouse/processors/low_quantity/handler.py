"""The low product quantity notifier: keeps its own quantity per SKU and runs
"notify low product quantity" when a shipment leaves a SKU at or below the
threshold. Increases never notify. Run by its listener actor."""

from __future__ import annotations

import peewee

from cqrs_warehouse.messaging.compiled import CompiledQuery
from cqrs_warehouse.messaging.message import Message, reads

from ...commands import notify_low_product_quantity
from ...events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED
from .models import NotifierProduct

DEFAULT_THRESHOLD = 5
_threshold = DEFAULT_THRESHOLD


def configure(*, threshold: int) -> None:
    """Set the threshold (bootstrap does, from LOW_QUANTITY_THRESHOLD)."""
    global _threshold
    _threshold = threshold


@reads(PRODUCT_QUANTITY_INCREASED, 1)
@reads(PRODUCT_QUANTITY_SHIPPED, 1)
def handle_message(message: Message) -> None:
    if message.type == PRODUCT_QUANTITY_INCREASED:
        _add(message.payload["sku"], message.payload["quantity"])
    elif message.type == PRODUCT_QUANTITY_SHIPPED:
        sku = message.payload["sku"]
        remaining = _add(sku, -message.payload["quantity"])
        if remaining <= _threshold:
            notify_low_product_quantity(sku, remaining)


_ADD = CompiledQuery(
    lambda sku, delta: (
        NotifierProduct.insert(sku=sku, quantity=delta)
        .on_conflict(
            conflict_target=[NotifierProduct.sku],
            update={NotifierProduct.quantity: NotifierProduct.quantity + peewee.EXCLUDED.quantity},
        )
        .returning(NotifierProduct.quantity)
    ),
    "\x01sku",
    10**15 + 7,
)


def _add(sku: str, delta: int) -> int:
    """Add ``delta`` to the notifier's quantity of ``sku``; returns the new quantity."""
    [(quantity,)] = _ADD.rows(sku, delta)
    return int(quantity)


def quantity_of(sku: str) -> int:
    row = NotifierProduct.get_or_none(NotifierProduct.sku == sku)
    return 0 if row is None else int(row.quantity)
