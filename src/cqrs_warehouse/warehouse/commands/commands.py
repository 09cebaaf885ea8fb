"""The warehouse commands. Each validates, changes the command state and appends
its events in one transaction. Called by the REST resources and the notifier."""

from __future__ import annotations

import logging
import re
from functools import partial

import peewee

from cqrs_warehouse.messaging import Message, Outbox, Statement

from ..errors import (
    InsufficientQuantityOnHandError,
    InvalidQuantityError,
    InvalidSkuError,
    StockLimitExceededError,
)
from ..events import (
    NOTIFIED_LOW_PRODUCT_QUANTITY,
    PRODUCT_QUANTITY_INCREASED,
    PRODUCT_QUANTITY_SHIPPED,
)
from .models import ProductStock

logger = logging.getLogger(__name__)

MAX_COMMAND_QUANTITY = 2**31 - 1
MAX_STOCK = 2**63 - 1
SKU_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
_SKU = re.compile(SKU_PATTERN)

# Insert the SKU or add to it, unless that would pass the limit; the SKU's
# new version, or no row.
_INCREASE_STOCK = Statement(
    lambda sku, quantity: (
        ProductStock.insert(sku=sku, quantity=quantity, version=1)
        .on_conflict(
            conflict_target=[ProductStock.sku],
            update={
                ProductStock.quantity: ProductStock.quantity + peewee.EXCLUDED.quantity,
                ProductStock.version: ProductStock.version + 1,
            },
            where=(ProductStock.quantity <= MAX_STOCK - peewee.EXCLUDED.quantity),
        )
        .returning(ProductStock.version)
    ),
    "\x01sku",
    10**15 + 7,
)
# Take from the SKU if that many are on hand; the condition is checked on the
# locked row, so concurrent shipments of one SKU never take more than is there.
_SHIP_STOCK = Statement(
    lambda sku, quantity: (
        ProductStock.update(
            quantity=ProductStock.quantity - quantity, version=ProductStock.version + 1
        )
        .where((ProductStock.sku == sku) & (ProductStock.quantity >= quantity))
        .returning(ProductStock.version)
    ),
    "\x01sku",
    10**15 + 7,
)


def validate_sku(sku: object) -> str:
    if not isinstance(sku, str) or not _SKU.fullmatch(sku):
        raise InvalidSkuError(
            f"SKU {sku!r} must be 1 to 64 characters of letters, digits, '-', '_' and '.'"
        )
    return sku


def validate_quantity(quantity: object) -> int:
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise InvalidQuantityError(f"quantity must be an integer, not {quantity!r}")
    if not 1 <= quantity <= MAX_COMMAND_QUANTITY:
        raise InvalidQuantityError(
            f"quantity must be from 1 to {MAX_COMMAND_QUANTITY}, not {quantity}"
        )
    return quantity


class Commands:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def increase_product_quantity(self, sku: str, quantity: int) -> Message:
        """Add ``quantity`` to the stock of ``sku``. Emits ProductQuantityIncreased v1."""
        validate_sku(sku)
        validate_quantity(quantity)
        with self.outbox.transaction():
            rows = _INCREASE_STOCK.rows(sku, quantity)
            if not rows:
                raise StockLimitExceededError(
                    f"increasing {sku} by {quantity} would pass the maximum stock of {MAX_STOCK}"
                )
            return self.outbox.append(
                Message(
                    type=PRODUCT_QUANTITY_INCREASED,
                    schema_version=1,
                    payload={"sku": sku, "quantity": quantity},
                    stream=sku,
                    position=rows[0][0],
                )
            )

    def ship_product_quantity(self, sku: str, quantity: int) -> Message:
        """Take ``quantity`` of ``sku`` out of stock. Emits ProductQuantityShipped v1.

        Fails with InsufficientQuantityOnHandError, changing nothing, when less
        than ``quantity`` is on hand (an unknown SKU has 0).
        """
        validate_sku(sku)
        validate_quantity(quantity)
        with self.outbox.transaction():
            rows = _SHIP_STOCK.rows(sku, quantity)
            if not rows:
                raise InsufficientQuantityOnHandError(
                    f"cannot ship {quantity} of {sku}: not that many on hand"
                )
            return self.outbox.append(
                Message(
                    type=PRODUCT_QUANTITY_SHIPPED,
                    schema_version=1,
                    payload={"sku": sku, "quantity": quantity},
                    stream=sku,
                    position=rows[0][0],
                )
            )

    def notify_low_product_quantity(self, sku: str, quantity: int) -> Message:
        """Warn that ``sku`` is low (``quantity`` left). Emits NotifiedLowProductQuantity v1.

        Does not check ``quantity``: the caller decided it is low. The warning
        is logged once the notification commits (with the notifier's
        transaction, when the notifier runs it), so one that is undone logs
        nothing.
        """
        validate_sku(sku)
        message = Message(
            type=NOTIFIED_LOW_PRODUCT_QUANTITY, schema_version=1, payload={"sku": sku}
        )
        with self.outbox.transaction():
            message = self.outbox.append(message)
            self.outbox.after_commit(
                partial(logger.warning, "Low quantity of product %s: %d remaining", sku, quantity)
            )
        return message
