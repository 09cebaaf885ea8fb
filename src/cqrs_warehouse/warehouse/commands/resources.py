"""REST resources for the warehouse commands. Routed by web.create_app."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from ..errors import InvalidQuantityError
from .commands import increase_product_quantity, ship_product_quantity


def _quantity_from(req: falcon.Request) -> Any:
    if req.content_type and falcon.MEDIA_JSON not in req.content_type:
        raise falcon.HTTPUnsupportedMediaType(
            title="Unsupported media type.",
            description=f"send the body as {falcon.MEDIA_JSON}, not {req.content_type}",
        )
    body = req.get_media()
    if not isinstance(body, dict):
        raise InvalidQuantityError('the body must be a JSON object like {"quantity": 5}')
    unknown = sorted(set(body) - {"quantity"})
    if unknown:
        raise InvalidQuantityError(f"unknown fields {unknown}: the body holds only 'quantity'")
    if "quantity" not in body:
        raise InvalidQuantityError('quantity is missing: send {"quantity": N}')
    return body["quantity"]


class _QuantityCommandResource:
    def __init__(self, command: Callable[[str, int], Any]) -> None:
        self.command = command

    def on_post(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        quantity = _quantity_from(req)
        message = self.command(sku, quantity)
        resp.media = {"sku": sku, "quantity": quantity, "message_id": message.id}


class IncreaseQuantityResource(_QuantityCommandResource):
    def __init__(self) -> None:
        super().__init__(increase_product_quantity)


class ShipQuantityResource(_QuantityCommandResource):
    def __init__(self) -> None:
        super().__init__(ship_product_quantity)
