"""REST resources of the warehouse commands. Routed by the slice's ``routes``.

Bodies are validated against the slice's OpenAPI schema (QuantityCommand);
the commands then apply the domain rules.
"""

from __future__ import annotations

from collections.abc import Callable

import falcon

from cqrs_warehouse.messaging import Message, encode_token
from cqrs_warehouse.web.validation import BodyValidator

from ..errors import InvalidBodyError, InvalidQuantityError, WarehouseError


class QuantityCommandResource:
    def __init__(
        self, name: str, command: Callable[[str, int], Message], body: BodyValidator
    ) -> None:
        self.name = name
        self.command = command
        self.body = body

    def on_post(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        req.context.command = self.name  # counted by outcome in cqrs_commands_total
        body = req.get_media()
        problems = self.body.errors(body)
        if problems:
            # Only "quantity" may be wrong in a body otherwise right.
            error: type[WarehouseError] = InvalidQuantityError
            if not isinstance(body, dict) or set(body) - {"quantity"}:
                error = InvalidBodyError
            raise error(
                'the body must be {"quantity": N} with N an integer from 1 to 2147483647 '
                "(5.0 counts as 5): " + "; ".join(problems)
            )
        quantity = int(body["quantity"])  # JSON Schema's integer: 5.0 is 5
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
