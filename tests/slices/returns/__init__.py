"""A second slice, dropped in beside the warehouse without any edit under src/:
customers' returns of products.

``POST /returns/{sku}`` records a return (the command keeps its own count
per SKU and emits ``Returns.Events.ProductReturned`` v1 through the outbox);
the ``ReturnsView`` handler keeps the quantity returned per SKU, served by
``GET /returns/{sku}`` (with read-your-writes). Everything it needs is
declared here once: its tables and migration, its setting, its Avro schema,
its services, routes, errors and OpenAPI fragment. An installation adds it
with SLICES=cqrs_warehouse.warehouse,tests.slices.returns and a listener in
listeners.yaml (handler tests.slices.returns:ReturnsView).
"""

from pathlib import Path

from cqrs_warehouse.slices import Slice, Store

from .returns import (
    FRAGMENT,
    ReturnCount,
    ReturnedQuantity,
    ReturnsError,
    ReturnsSettings,
    ReturnsView,
    build,
    routes,
)

_HERE = Path(__file__).parent

SLICE = Slice(
    name="returns",
    stores=(Store("returns", "returns", _HERE / "migrations", (ReturnCount, ReturnedQuantity)),),
    settings=ReturnsSettings,
    schemas=_HERE / "schemas",
    build=build,
    routes=routes,
    errors={ReturnsError: 400},
    openapi=FRAGMENT,
)

__all__ = ["SLICE", "ReturnsView"]
