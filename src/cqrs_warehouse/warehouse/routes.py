"""The warehouse's HTTP routes, given its services and the runtime."""

from __future__ import annotations

from typing import Any

from cqrs_warehouse.slices import Route
from cqrs_warehouse.web.read_your_writes import ReadYourWrites
from cqrs_warehouse.web.validation import BodyValidator

from .commands.resources import QuantityCommandResource
from .openapi import QUANTITY_COMMAND
from .services import Warehouse
from .views.products import ProductResource, ProductsResource, ProductsView


def routes(warehouse: Warehouse, runtime: Any) -> list[Route]:
    views = runtime.routing.listeners_of(ProductsView)
    consistent = ReadYourWrites(
        runtime.consistency,
        listener=views[0].name if views else "products_view",
        timeout=runtime.settings.consistency_timeout,
        metrics=runtime.metrics,
    )
    body = BodyValidator(QUANTITY_COMMAND)
    commands = warehouse.commands
    return [
        ("/warehouse/products", ProductsResource(consistent)),
        ("/warehouse/products/{sku}", ProductResource(consistent)),
        (
            "/warehouse/products/{sku}/increase_quantity",
            QuantityCommandResource(
                "increase_product_quantity", commands.increase_product_quantity, body
            ),
        ),
        (
            "/warehouse/products/{sku}/ship_quantity",
            QuantityCommandResource("ship_product_quantity", commands.ship_product_quantity, body),
        ),
    ]
