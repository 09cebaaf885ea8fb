"""The warehouse's event types. Commands emit them; listeners read them."""

from __future__ import annotations

from collections.abc import Sequence

from cqrs_warehouse.messaging.message import Message

PRODUCT_QUANTITY_INCREASED = "Warehouse.Events.ProductQuantityIncreased"
PRODUCT_QUANTITY_SHIPPED = "Warehouse.Events.ProductQuantityShipped"
NOTIFIED_LOW_PRODUCT_QUANTITY = "Warehouse.Events.NotifiedLowProductQuantity"


def quantity_change(message: Message) -> tuple[str, int] | None:
    """(SKU, change) of an event that changes a product's quantity: what was
    increased adds, what was shipped subtracts; None for other events."""
    if message.type == PRODUCT_QUANTITY_INCREASED:
        return message.payload["sku"], message.payload["quantity"]
    if message.type == PRODUCT_QUANTITY_SHIPPED:
        return message.payload["sku"], -message.payload["quantity"]
    return None


def total_changes(messages: Sequence[Message]) -> dict[str, int]:
    """The quantity changes of ``messages`` added up per SKU, in SKU order
    (code points, the order in which a listener's transaction locks rows)."""
    totals: dict[str, int] = {}
    for message in messages:
        change = quantity_change(message)
        if change is not None:
            totals[change[0]] = totals.get(change[0], 0) + change[1]
    return dict(sorted(totals.items()))
