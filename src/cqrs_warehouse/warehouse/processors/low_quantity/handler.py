"""The low product quantity notifier: keeps its own quantity per SKU and runs
"notify low product quantity" when a shipment leaves a SKU at or below the
threshold. Increases never notify. Run by its listener actor.

Its handler is ``rollback_safe``: it only writes in the listener's
transaction, and the command logs its warning after the commit.
"""

from __future__ import annotations

import peewee

from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.compiled import CompiledQuery
from cqrs_warehouse.messaging.database import (
    database,
    execute_prepared,
    is_postgres,
    qualified_name,
)
from cqrs_warehouse.messaging.listeners import claiming_ahead
from cqrs_warehouse.messaging.message import Message, batch_handler_for, reads, rollback_safe

from ...commands import notify_low_product_quantity
from ...events import (
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
    quantity_change,
    total_changes,
)
from .models import NotifierProduct

DEFAULT_THRESHOLD = 5
_threshold = DEFAULT_THRESHOLD


def configure(*, threshold: int) -> None:
    """Set the threshold (bootstrap does, from LOW_QUANTITY_THRESHOLD)."""
    global _threshold
    _threshold = threshold


@rollback_safe
@reads(PRODUCT_QUANTITY_INCREASED, 1)
@reads(PRODUCT_QUANTITY_SHIPPED, 1)
def handle_message(message: Message) -> None:
    change = quantity_change(message)
    if change is None:
        return
    sku, delta = change
    if message.type != PRODUCT_QUANTITY_SHIPPED:
        # An increase never notifies: nothing reads the new quantity, so the
        # write goes with the COMMIT (PostgreSQL), a round trip fewer.
        _ADD.run_deferred(sku, delta)
        return
    if claiming_ahead():
        # A bet that the shipment leaves more than the threshold, as nearly
        # all do: the write goes with the COMMIT, and PostgreSQL refuses the
        # transaction if the bet is lost. The message is then applied again
        # the usual way, which reads the quantity left and notifies.
        execute_prepared(
            _ADD_ABOVE_THRESHOLD_SQL.format(table=qualified_name(NotifierProduct)),
            [sku, delta, _threshold],
            defer=True,
        )
        return
    remaining = _add(sku, delta)
    if remaining <= _threshold:
        notify_low_product_quantity(sku, remaining)


@batch_handler_for(handle_message)
def handle_messages(messages: list[Message]) -> None:
    """The same for several messages: one statement for all their SKUs, then
    the notifications ``handle_message`` would have sent, in the same order."""
    totals = total_changes(messages)
    if not totals:
        return
    if all(message.type != PRODUCT_QUANTITY_SHIPPED for message in messages):
        _add_many(totals, read=False)  # only increases: nothing to notify
        return
    # Each SKU's quantity after each message: from the last, take the changes back.
    remaining = _add_many(totals)
    low: list[tuple[Message, str, int]] = []
    for message in reversed(messages):
        change = quantity_change(message)
        if change is None:
            continue
        sku, delta = change
        if message.type == PRODUCT_QUANTITY_SHIPPED and remaining[sku] <= _threshold:
            low.append((message, sku, remaining[sku]))
        remaining[sku] -= delta
    for message, sku, quantity in reversed(low):
        with context.of_message(message):
            notify_low_product_quantity(sku, quantity)


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


def _add_many(totals: dict[str, int], *, read: bool = True) -> dict[str, int]:
    """``_add`` for several SKUs in one statement; returns their new quantities
    (none if not ``read``: then, on PostgreSQL, it goes with the COMMIT)."""
    if is_postgres(database.obj):
        # One array per column: one statement prepared once, whatever the
        # number of SKUs (peewee would build and PostgreSQL parse each one).
        cursor = execute_prepared(
            _ADD_MANY_SQL.format(table=qualified_name(NotifierProduct)),
            {"skus": list(totals), "deltas": list(totals.values())},
            defer=not read,
        )
        if not read:
            return {}
        rows = cursor.fetchall()
    else:
        rows = (
            NotifierProduct.insert_many(
                list(totals.items()), fields=[NotifierProduct.sku, NotifierProduct.quantity]
            )
            .on_conflict(
                conflict_target=[NotifierProduct.sku],
                update={
                    NotifierProduct.quantity: NotifierProduct.quantity + peewee.EXCLUDED.quantity
                },
            )
            .returning(NotifierProduct.sku, NotifierProduct.quantity)
            .tuples()
            .execute()
        )
    return {sku: int(quantity) for sku, quantity in rows}


_ADD_ABOVE_THRESHOLD_SQL = (
    "WITH added AS (INSERT INTO {table} AS p (sku, quantity) VALUES (%s::varchar, %s::bigint) "
    "ON CONFLICT (sku) DO UPDATE SET quantity = p.quantity + EXCLUDED.quantity "
    "RETURNING quantity) "
    "SELECT \"messaging\".expect(quantity > %s, 'the quantity left is above the threshold') "
    "FROM added"
)
_ADD_MANY_SQL = (
    "INSERT INTO {table} AS p (sku, quantity) "
    "SELECT * FROM unnest(%(skus)s::varchar[], %(deltas)s::bigint[]) "
    "ON CONFLICT (sku) DO UPDATE SET quantity = p.quantity + EXCLUDED.quantity "
    "RETURNING sku, quantity"
)


def quantity_of(sku: str) -> int:
    row = NotifierProduct.get_or_none(NotifierProduct.sku == sku)
    return 0 if row is None else int(row.quantity)
