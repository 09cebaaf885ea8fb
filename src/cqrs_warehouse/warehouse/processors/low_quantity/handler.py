"""The low product quantity notifier: keeps its own quantity per SKU and runs
"notify low product quantity" when a shipment leaves a SKU at or below the
threshold. Increases never notify. Applied by the listener engine.

It is rollback-safe: it only writes in the listener's transaction, and the
command logs its warning after the commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import peewee

from cqrs_warehouse.messaging import Bulk, Handler, Message, Statement, context

from ...events import (
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
    quantity_change,
    total_changes,
)
from .models import NotifierProduct

if TYPE_CHECKING:
    from ...services import Warehouse

# Add to a SKU's quantity; returns the new quantity.
_ADD = Statement(
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
_ADD_MANY = Bulk(
    [NotifierProduct.sku, NotifierProduct.quantity],
    lambda insert: insert.on_conflict(
        conflict_target=[NotifierProduct.sku],
        update={NotifierProduct.quantity: NotifierProduct.quantity + peewee.EXCLUDED.quantity},
    ).returning(NotifierProduct.sku, NotifierProduct.quantity),
)


class LowQuantityNotifier(Handler):
    reads: ClassVar[Mapping[str, int]] = {
        PRODUCT_QUANTITY_INCREASED: 1,
        PRODUCT_QUANTITY_SHIPPED: 1,
    }
    rollback_safe = True

    def __init__(self, warehouse: Warehouse) -> None:
        self.commands = warehouse.commands
        self.threshold = warehouse.settings.low_quantity_threshold

    def apply(self, message: Message) -> None:
        change = quantity_change(message)
        if change is None:
            return
        sku, delta = change
        if message.type != PRODUCT_QUANTITY_SHIPPED:
            # An increase never notifies: nothing reads the new quantity.
            _ADD.run(sku, delta, defer=True)
            return
        [(remaining,)] = _ADD.rows(sku, delta)
        if remaining <= self.threshold:
            self.commands.notify_low_product_quantity(sku, remaining)

    def apply_ahead(self, message: Message) -> None:
        """A bet that a shipment leaves more than the threshold, as nearly all
        do: its write goes with the COMMIT, and the transaction is refused if
        the bet is lost; ``apply`` then reads the quantity left and notifies."""
        change = quantity_change(message)
        if change is not None:
            must_exceed = self.threshold if message.type == PRODUCT_QUANTITY_SHIPPED else None
            _ADD.run(*change, defer=True, must_exceed=must_exceed)

    def apply_batch(self, messages: Sequence[Message]) -> None:
        """One statement for all their SKUs, then the notifications ``apply``
        would have sent, in the same order."""
        totals = total_changes(messages)
        if not totals:
            return
        columns: list[list[Any]] = [list(totals), list(totals.values())]
        if all(message.type != PRODUCT_QUANTITY_SHIPPED for message in messages):
            _ADD_MANY.run(columns, defer=True)  # only increases: nothing to notify
            return
        # Each SKU's quantity after each message: from the last, take the changes back.
        remaining = {sku: int(quantity) for sku, quantity in _ADD_MANY.rows(columns)}
        low: list[tuple[Message, str, int]] = []
        for message in reversed(messages):
            change = quantity_change(message)
            if change is None:
                continue
            sku, delta = change
            if message.type == PRODUCT_QUANTITY_SHIPPED and remaining[sku] <= self.threshold:
                low.append((message, sku, remaining[sku]))
            remaining[sku] -= delta
        for message, sku, quantity in reversed(low):
            with context.of_message(message):
                self.commands.notify_low_product_quantity(sku, quantity)


def quantity_of(sku: str) -> int:
    row = NotifierProduct.get_or_none(NotifierProduct.sku == sku)
    return 0 if row is None else int(row.quantity)
