"""The warehouse error tree. Raised by the commands; the web app maps it to HTTP in one place.

WarehouseError
├── InvalidSkuError                    a SKU that is not 1-64 of [A-Za-z0-9._-]
├── InvalidBodyError                   a command's body is not {"quantity": N}
├── InvalidQuantityError               not an integer from 1 to 2^31-1
├── InsufficientQuantityOnHandError    shipping more than is on hand
└── StockLimitExceededError            stock would pass 2^63-1
"""


class WarehouseError(Exception):
    """Root of the warehouse's domain errors: the command broke a rule, nothing changed."""

    title = "Invalid command."


class InvalidSkuError(WarehouseError):
    title = "Invalid SKU."


class InvalidBodyError(WarehouseError):
    title = "Invalid body."


class InvalidQuantityError(WarehouseError):
    title = "Invalid quantity."


class InsufficientQuantityOnHandError(WarehouseError):
    title = "Insufficient quantity on hand."


class StockLimitExceededError(WarehouseError):
    title = "Stock limit exceeded."
