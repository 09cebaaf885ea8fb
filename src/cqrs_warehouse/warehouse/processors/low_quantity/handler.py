"""The low product quantity notifier: keeps its own quantity per SKU and runs
"notify low product quantity" when a shipment leaves a SKU at or below the
threshold. Increases never notify. Run by its listener actor."""

from __future__ import annotations

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


def _add(sku: str, delta: int) -> int:
    rows = list(
        NotifierProduct.insert(sku=sku, quantity=delta)
        .on_conflict(
            conflict_target=[NotifierProduct.sku],
            update={NotifierProduct.quantity: NotifierProduct.quantity + delta},
        )
        .returning(NotifierProduct.quantity)
        .tuples()
        .execute()
    )
    return int(rows[0][0])


def quantity_of(sku: str) -> int:
    row = NotifierProduct.get_or_none(NotifierProduct.sku == sku)
    return 0 if row is None else int(row.quantity)
