"""The warehouse commands. Each validates, changes the command state and appends
its events in one transaction. Called by the REST resources and the notifier."""

from __future__ import annotations

import logging
import re

import peewee

from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.compiled import CompiledQuery
from cqrs_warehouse.messaging.message import Message

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
_SKU = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_INCREASE = CompiledQuery(
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
_SHIP = CompiledQuery(
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


def increase_product_quantity(sku: str, quantity: int) -> Message:
    """Add ``quantity`` to the stock of ``sku``. Emits ProductQuantityIncreased v1."""
    validate_sku(sku)
    validate_quantity(quantity)
    with outbox.transaction():
        # One statement: insert the SKU or add to it, unless that would pass
        # the limit (then no row comes back).
        rows = _INCREASE.rows(sku, quantity)
        if not rows:
            raise StockLimitExceededError(
                f"increasing {sku} by {quantity} would pass the maximum stock of {MAX_STOCK}"
            )
        message = Message(
            type=PRODUCT_QUANTITY_INCREASED,
            schema_version=1,
            payload={"sku": sku, "quantity": quantity},
            stream=sku,
            position=rows[0][0],
        )
        message = outbox.append(message)
    return message


def ship_product_quantity(sku: str, quantity: int) -> Message:
    """Take ``quantity`` of ``sku`` out of stock. Emits ProductQuantityShipped v1.

    Fails with InsufficientQuantityOnHandError, changing nothing, when less
    than ``quantity`` is on hand (an unknown SKU has 0).
    """
    validate_sku(sku)
    validate_quantity(quantity)
    with outbox.transaction():
        # The condition is checked on the locked row: concurrent shipments
        # of one SKU never take more than is there.
        rows = _SHIP.rows(sku, quantity)
        if not rows:
            raise InsufficientQuantityOnHandError(
                f"cannot ship {quantity} of {sku}: not that many on hand"
            )
        message = Message(
            type=PRODUCT_QUANTITY_SHIPPED,
            schema_version=1,
            payload={"sku": sku, "quantity": quantity},
            stream=sku,
            position=rows[0][0],
        )
        message = outbox.append(message)
    return message


def notify_low_product_quantity(sku: str, quantity: int) -> Message:
    """Warn that ``sku`` is low (``quantity`` left). Emits NotifiedLowProductQuantity v1.

    Does not check ``quantity``: the caller decided it is low.
    """
    validate_sku(sku)
    logger.warning("Low quantity of product %s: %d remaining", sku, quantity)
    message = Message(type=NOTIFIED_LOW_PRODUCT_QUANTITY, schema_version=1, payload={"sku": sku})
    with outbox.transaction():
        message = outbox.append(message)
    return message
