"""Warehouse commands: their state, rules and REST resources.

Other slices may call the command functions; only this package touches
ProductStock.
"""

from .commands import (
    MAX_COMMAND_QUANTITY,
    MAX_STOCK,
    increase_product_quantity,
    notify_low_product_quantity,
    ship_product_quantity,
)
from .models import ProductStock
from .resources import IncreaseQuantityResource, ShipQuantityResource

MODELS = [ProductStock]

__all__ = [
    "MAX_COMMAND_QUANTITY",
    "MAX_STOCK",
    "MODELS",
    "IncreaseQuantityResource",
    "ProductStock",
    "ShipQuantityResource",
    "increase_product_quantity",
    "notify_low_product_quantity",
    "ship_product_quantity",
]
