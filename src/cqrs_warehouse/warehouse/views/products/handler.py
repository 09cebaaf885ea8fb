"""The products view's handler: Increased adds, Shipped subtracts. Run by the listener engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import peewee

from cqrs_warehouse.messaging import Bulk, Handler, Message, Statement

from ...events import (
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
    quantity_change,
    total_changes,
)
from .models import ProductView

_ADD = Statement(
    lambda sku, delta: ProductView.insert(sku=sku, quantity=delta).on_conflict(
        conflict_target=[ProductView.sku],
        update={ProductView.quantity: ProductView.quantity + peewee.EXCLUDED.quantity},
    ),
    "\x01sku",
    10**15 + 7,
)
_ADD_MANY = Bulk(
    [ProductView.sku, ProductView.quantity],
    lambda insert: insert.on_conflict(
        conflict_target=[ProductView.sku],
        update={ProductView.quantity: ProductView.quantity + peewee.EXCLUDED.quantity},
    ),
)


class ProductsView(Handler):
    reads: ClassVar[Mapping[str, int]] = {
        PRODUCT_QUANTITY_INCREASED: 1,
        PRODUCT_QUANTITY_SHIPPED: 1,
    }
    rollback_safe = True
    read_your_writes = True  # GET /warehouse/products?after=TOKEN

    def __init__(self, warehouse: Any = None) -> None:
        pass  # it needs nothing of the slice's services

    def apply(self, message: Message) -> None:
        change = quantity_change(message)
        if change is not None:
            _ADD.run(*change, defer=True)  # nothing reads its result

    def apply_batch(self, messages: Sequence[Message]) -> None:
        """One statement for all their SKUs."""
        totals = total_changes(messages)
        if totals:
            _ADD_MANY.run([list(totals), list(totals.values())], defer=True)

    def reset(self) -> None:
        """Empty the view (``cqrs-warehouse rebuild`` then replays the archive)."""
        ProductView.delete().execute()


def quantity_of(sku: str) -> int:
    """The view's quantity of ``sku`` (0 for a SKU it never saw)."""
    row = ProductView.get_or_none(ProductView.sku == sku)
    return 0 if row is None else int(row.quantity)


def list_products() -> list[dict[str, object]]:
    """Every SKU of the view and its quantity, in code-point order of SKU."""
    query = ProductView.select(ProductView.sku, ProductView.quantity).order_by(ProductView.sku)
    return [{"sku": row.sku, "quantity": row.quantity} for row in query]
