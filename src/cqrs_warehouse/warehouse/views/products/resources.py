"""REST resources of the products view. Routed by web.build_app.

A request may carry a consistency token (``?after=TOKEN`` or the
``X-Consistency-Token`` header) from a command's response; it is then
answered once the view has applied that command's event, or with 503 when
that takes longer than CONSISTENCY_TIMEOUT.
"""

from __future__ import annotations

import falcon

from cqrs_warehouse.messaging.consistency import ConsistencyGate

from ...commands.commands import validate_sku
from .handler import list_products, quantity_of


class _ReadYourWrites:
    def __init__(self, gate: ConsistencyGate) -> None:
        self.gate = gate

    def wait_for_token(self, req: falcon.Request) -> None:
        token = req.get_param("after") or req.get_header("X-Consistency-Token")
        if not token:
            return
        if not self.gate.wait_for(token):
            raise falcon.HTTPServiceUnavailable(
                title="Not consistent yet.",
                description=(
                    f"The products view has not applied the write of that token within "
                    f"{self.gate.timeout:g} s; retry."
                ),
                retry_after=1,
            )


class ProductsResource(_ReadYourWrites):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.wait_for_token(req)
        resp.media = list_products()


class ProductResource(_ReadYourWrites):
    def on_get(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        validate_sku(sku)
        self.wait_for_token(req)
        resp.media = {"sku": sku, "quantity": quantity_of(sku)}
