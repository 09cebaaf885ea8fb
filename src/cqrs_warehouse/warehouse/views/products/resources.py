"""REST resources of the products view. Routed by the slice's ``routes``.

A request may carry a consistency token from a command's response; it is
then answered once the view has applied that command's event
(``ReadYourWrites``).
"""

from __future__ import annotations

import falcon

from cqrs_warehouse.web.read_your_writes import ReadYourWrites

from ...commands import validate_sku
from .handler import list_products, quantity_of


class ProductsResource:
    def __init__(self, consistent: ReadYourWrites) -> None:
        self.consistent = consistent

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.consistent.wait(req)
        resp.media = list_products()


class ProductResource:
    def __init__(self, consistent: ReadYourWrites) -> None:
        self.consistent = consistent

    def on_get(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        validate_sku(sku)
        self.consistent.wait(req)
        resp.media = {"sku": sku, "quantity": quantity_of(sku)}
