"""The warehouse commands. Each validates, changes the command state and appends
its events in one transaction. Called by the REST resources and the notifier."""

from __future__ import annotations

import logging
import re
from functools import partial

from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.database import (
    database,
    execute_prepared,
    is_postgres,
    qualified_name,
)
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


class _StockStatement:
    """A statement on the stock table, as SQL written out once per kind of
    database (its schema and placeholder differ); it returns the SKU's new
    version, or no row when the command's condition does not hold.

    Plain SQL, so that one version serves every database; on PostgreSQL it
    is prepared once per connection (``database.execute_prepared``), and as the
    transaction's first statement it carries the BEGIN (messaging.database).
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self._by_kind: dict[type, str] = {}

    def rows(self, *values: object) -> list[tuple]:
        sql = self.sql()
        if is_postgres(database.obj):
            cursor = execute_prepared(sql, values)
        else:
            cursor = database.execute_sql(sql, values)
        return list(cursor.fetchall())

    def sql(self) -> str:
        kind = type(database.obj)
        sql = self._by_kind.get(kind)
        if sql is None:
            sql = self._by_kind[kind] = self.template.format(
                stock=qualified_name(ProductStock),
                row=f'"{ProductStock._meta.table_name}"',
                p=database.param,
            )
        return sql


# Insert the SKU or add to it, unless that would pass the limit.
# Parameters: sku, quantity, MAX_STOCK.
_INCREASE = _StockStatement(
    "INSERT INTO {stock} (sku, quantity, version) VALUES ({p}, {p}, 1) "
    "ON CONFLICT (sku) DO UPDATE SET quantity = {row}.quantity + EXCLUDED.quantity, "
    "version = {row}.version + 1 "
    "WHERE {row}.quantity <= {p} - EXCLUDED.quantity "
    "RETURNING version"
)
# Take from the SKU if that many are on hand; the condition is checked on the
# locked row, so concurrent shipments of one SKU never take more than is there.
# Parameters: quantity, sku, quantity.
_SHIP = _StockStatement(
    "UPDATE {stock} SET quantity = quantity - {p}, version = version + 1 "
    "WHERE sku = {p} AND quantity >= {p} "
    "RETURNING version"
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
        rows = _INCREASE.rows(sku, quantity, MAX_STOCK)
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
        rows = _SHIP.rows(quantity, sku, quantity)
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

    Does not check ``quantity``: the caller decided it is low. The warning is
    logged once the notification commits (with the notifier's transaction,
    when the notifier runs it), so a notification that is undone logs nothing.
    """
    validate_sku(sku)
    message = Message(type=NOTIFIED_LOW_PRODUCT_QUANTITY, schema_version=1, payload={"sku": sku})
    with outbox.transaction():
        message = outbox.append(message)
        outbox.after_commit(
            partial(logger.warning, "Low quantity of product %s: %d remaining", sku, quantity)
        )
    return message
