"""The returns slice: its command, its view's handler, its resources and its declarations."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import falcon
import peewee

from cqrs_warehouse.messaging import Handler, Message, Model, Outbox, Statement, encode_token
from cqrs_warehouse.settings import number, variable
from cqrs_warehouse.slices import Route, SliceContext
from cqrs_warehouse.web.openapi import READ_YOUR_WRITES, consistent_read, error_response
from cqrs_warehouse.web.read_your_writes import ReadYourWrites
from cqrs_warehouse.web.validation import BodyValidator

PRODUCT_RETURNED = "Returns.Events.ProductReturned"


class ReturnsError(Exception):
    title = "Invalid return."


@dataclass(frozen=True)
class ReturnsSettings:
    #: The largest quantity one return may hold.
    most_per_return: int = variable("RETURNS_MOST_PER_RETURN", 1000, number(int, minimum=1))


# --- the command side -------------------------------------------------------


class ReturnCount(Model):
    """The command side's own state: returns recorded per SKU (its stream's version)."""

    sku = peewee.CharField(max_length=64, primary_key=True)
    version = peewee.BigIntegerField()

    class Meta:
        table_name = "returns_counts"


_COUNT = Statement(
    lambda sku: (
        ReturnCount.insert(sku=sku, version=1)
        .on_conflict(
            conflict_target=[ReturnCount.sku],
            update={ReturnCount.version: ReturnCount.version + 1},
        )
        .returning(ReturnCount.version)
    ),
    "\x01sku",
)


class Returns:
    def __init__(self, outbox: Outbox, settings: ReturnsSettings) -> None:
        self.outbox = outbox
        self.settings = settings

    def record_return(self, sku: str, quantity: int) -> Message:
        """Record that ``quantity`` of ``sku`` came back. Emits ProductReturned v1."""
        if not 1 <= quantity <= self.settings.most_per_return:
            raise ReturnsError(
                f"a return holds 1 to {self.settings.most_per_return}, not {quantity}"
            )
        with self.outbox.transaction():
            [(version,)] = _COUNT.rows(sku)
            return self.outbox.append(
                Message(
                    type=PRODUCT_RETURNED,
                    schema_version=1,
                    payload={"sku": sku, "quantity": quantity},
                    stream=f"returns:{sku}",
                    position=version,
                )
            )


def build(context: SliceContext) -> Returns:
    return Returns(context.outbox, context.settings)


# --- the view -----------------------------------------------------------------


class ReturnedQuantity(Model):
    sku = peewee.CharField(max_length=64, primary_key=True)
    quantity = peewee.BigIntegerField()

    class Meta:
        table_name = "returns_view"


_ADD = Statement(
    lambda sku, quantity: ReturnedQuantity.insert(sku=sku, quantity=quantity).on_conflict(
        conflict_target=[ReturnedQuantity.sku],
        update={ReturnedQuantity.quantity: ReturnedQuantity.quantity + peewee.EXCLUDED.quantity},
    ),
    "\x01sku",
    10**15 + 7,
)


class ReturnsView(Handler):
    reads: ClassVar[Mapping[str, int]] = {PRODUCT_RETURNED: 1}
    read_your_writes = True

    def __init__(self, returns: Returns) -> None:
        pass

    def apply(self, message: Message) -> None:
        if message.type == PRODUCT_RETURNED:
            _ADD.run(message.payload["sku"], message.payload["quantity"])

    def reset(self) -> None:
        ReturnedQuantity.delete().execute()


def returned(sku: str) -> int:
    row = ReturnedQuantity.get_or_none(ReturnedQuantity.sku == sku)
    return 0 if row is None else int(row.quantity)


# --- HTTP -----------------------------------------------------------------------

SKU_PATTERN = (
    r"^[A-Za-z0-9._-]{1,64}$"  # the warehouse's rule, stated again: no slice imports another
)
_SKU = re.compile(SKU_PATTERN)

_BODY = {
    "type": "object",
    "properties": {"quantity": {"type": "integer", "minimum": 1}},
    "required": ["quantity"],
    "additionalProperties": False,
}


def _valid_sku(sku: str) -> str:
    if not _SKU.fullmatch(sku):
        raise ReturnsError(f"SKU {sku!r} must be 1 to 64 of letters, digits, '-', '_' and '.'")
    return sku


class ReturnResource:
    def __init__(self, returns: Returns, consistent: ReadYourWrites) -> None:
        self.returns = returns
        self.consistent = consistent
        self.body = BodyValidator(_BODY)

    def on_post(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        req.context.command = "record_return"
        _valid_sku(sku)
        body = req.get_media()
        problems = self.body.errors(body)
        if problems:
            raise ReturnsError("; ".join(problems))
        message = self.returns.record_return(sku, int(body["quantity"]))
        assert message.stream is not None and message.position is not None
        token = encode_token(message.stream, message.position)
        resp.set_header("X-Consistency-Token", token)
        resp.media = {"sku": sku, "message_id": message.id, "consistency_token": token}

    def on_get(self, req: falcon.Request, resp: falcon.Response, sku: str) -> None:
        _valid_sku(sku)
        self.consistent.wait(req)
        resp.media = {"sku": sku, "returned": returned(sku)}


def routes(returns: Returns, runtime: Any) -> list[Route]:
    views = runtime.routing.listeners_of(ReturnsView)
    consistent = ReadYourWrites(
        runtime.consistency,
        listener=views[0].name if views else "returns_view",
        timeout=runtime.settings.consistency_timeout,
    )
    return [("/returns/{sku}", ReturnResource(returns, consistent))]


FRAGMENT: dict[str, Any] = {
    "paths": {
        "/returns/{sku}": {
            "parameters": [
                {
                    "name": "sku",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": SKU_PATTERN, "maxLength": 64},
                }
            ],
            "post": {
                "summary": "Record a return.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _BODY}},
                },
                "responses": {
                    "200": {
                        "description": "Recorded; the event is in the outbox.",
                        "headers": {
                            "X-Consistency-Token": {"$ref": "#/components/headers/ConsistencyToken"}
                        },
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "sku": {"type": "string"},
                                        "message_id": {"type": "string"},
                                        "consistency_token": {"type": "string"},
                                    },
                                    "required": ["sku", "message_id", "consistency_token"],
                                }
                            }
                        },
                    },
                    "400": error_response(
                        "Nothing changed: an invalid SKU or body, or a quantity over "
                        "RETURNS_MOST_PER_RETURN (a setting, default 1000)."
                    ),
                },
            },
            "get": {
                "summary": "The quantity returned of a SKU.",
                "parameters": READ_YOUR_WRITES,
                "responses": consistent_read(
                    {
                        "description": "The quantity returned.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "sku": {"type": "string"},
                                        "returned": {"type": "integer"},
                                    },
                                    "required": ["sku", "returned"],
                                }
                            }
                        },
                    },
                    invalid="An invalid SKU. ",
                ),
            },
        }
    }
}
