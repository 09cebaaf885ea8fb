"""REST resources for the warehouse commands. Routed by web.create_app.

Bodies are validated against the OpenAPI document's QuantityCommand schema;
the commands then apply the domain rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from ...messaging.consistency import encode_token
from ...openapi import request_body_errors
from ..errors import InvalidQuantityError
from .commands import increase_product_quantity, ship_product_quantity


class _QuantityCommandResource:
    def __init__(self, name: str, command: Callable[[str, int], Any]) -> None:
        self.name = name
        self.command = command

    def on_post(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        req.context.command = self.name
        body = req.get_media()
        problems = request_body_errors("QuantityCommand", body)
        if problems:
            raise InvalidQuantityError(
                'the body must be {"quantity": N} with N an integer from 1 to 2147483647: '
                + "; ".join(problems)
            )
        quantity = body["quantity"]
        message = self.command(sku, quantity)
        assert message.stream is not None and message.position is not None
        token = encode_token(message.stream, message.position)
        resp.set_header("X-Consistency-Token", token)
        resp.media = {
            "sku": sku,
            "quantity": quantity,
            "message_id": message.id,
            "consistency_token": token,
        }


class IncreaseQuantityResource(_QuantityCommandResource):
    def __init__(self) -> None:
        super().__init__("increase_product_quantity", increase_product_quantity)


class ShipQuantityResource(_QuantityCommandResource):
    def __init__(self) -> None:
        super().__init__("ship_product_quantity", ship_product_quantity)
