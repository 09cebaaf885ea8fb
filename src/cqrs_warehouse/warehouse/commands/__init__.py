"""Warehouse commands: their state, rules and REST resources.

Other parts of the slice call the commands through ``Commands``; only this
package touches ProductStock.
"""

from .commands import (
    MAX_COMMAND_QUANTITY,
    MAX_STOCK,
    SKU_PATTERN,
    Commands,
    validate_quantity,
    validate_sku,
)
from .models import ProductStock

__all__ = [
    "MAX_COMMAND_QUANTITY",
    "MAX_STOCK",
    "SKU_PATTERN",
    "Commands",
    "ProductStock",
    "validate_quantity",
    "validate_sku",
]
