"""The products view's listener: Increased adds, Shipped subtracts. Run by its listener actor."""

from __future__ import annotations

import peewee

from cqrs_warehouse.messaging.compiled import CompiledQuery
from cqrs_warehouse.messaging.database import (
    database,
    execute_prepared,
    is_postgres,
    qualified_name,
)
from cqrs_warehouse.messaging.message import Message, batch_handler_for, reads, rollback_safe

from ...events import (
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
    quantity_change,
    total_changes,
)
from .models import ProductView


@rollback_safe
@reads(PRODUCT_QUANTITY_INCREASED, 1)
@reads(PRODUCT_QUANTITY_SHIPPED, 1)
def handle_message(message: Message) -> None:
    change = quantity_change(message)
    if change is not None:
        _add(*change)


@batch_handler_for(handle_message)
def handle_messages(messages: list[Message]) -> None:
    """The same for several messages: one statement for all their SKUs."""
    totals = total_changes(messages)
    if not totals:
        return
    if is_postgres(database.obj):
        # One array per column: one statement prepared once, whatever the
        # number of SKUs (peewee would build and PostgreSQL parse each one).
        execute_prepared(
            _ADD_MANY_SQL.format(table=qualified_name(ProductView)),
            {"skus": list(totals), "deltas": list(totals.values())},
            defer=True,  # sent with the COMMIT: nothing here reads its result
        )
    else:
        ProductView.insert_many(
            list(totals.items()), fields=[ProductView.sku, ProductView.quantity]
        ).on_conflict(
            conflict_target=[ProductView.sku],
            update={ProductView.quantity: ProductView.quantity + peewee.EXCLUDED.quantity},
        ).execute()


_ADD_MANY_SQL = (
    "INSERT INTO {table} AS p (sku, quantity) "
    "SELECT * FROM unnest(%(skus)s::varchar[], %(deltas)s::bigint[]) "
    "ON CONFLICT (sku) DO UPDATE SET quantity = p.quantity + EXCLUDED.quantity"
)


_ADD = CompiledQuery(
    lambda sku, delta: ProductView.insert(sku=sku, quantity=delta).on_conflict(
        conflict_target=[ProductView.sku],
        update={ProductView.quantity: ProductView.quantity + peewee.EXCLUDED.quantity},
    ),
    "\x01sku",
    10**15 + 7,
)


def _add(sku: str, delta: int) -> None:
    _ADD.run_deferred(sku, delta)  # sent with the COMMIT (PostgreSQL)


def reset() -> None:
    """Empty the view (``cqrs-warehouse rebuild`` then replays the archive)."""
    ProductView.delete().execute()


def quantity_of(sku: str) -> int:
    """The view's quantity of ``sku`` (0 for a SKU it never saw)."""
    row = ProductView.get_or_none(ProductView.sku == sku)
    return 0 if row is None else int(row.quantity)


def list_products() -> list[dict[str, object]]:
    sku = ProductView.sku
    # Code-point order on every database: PostgreSQL would otherwise sort by
    # its (locale-dependent) collation, SQLite by bytes.
    order = sku.collate('"C"') if is_postgres(database.obj) else sku
    query = ProductView.select(ProductView.sku, ProductView.quantity).order_by(order)
    return [{"sku": row.sku, "quantity": row.quantity} for row in query]
