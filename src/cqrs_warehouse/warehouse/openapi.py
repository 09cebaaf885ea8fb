"""The warehouse's part of the OpenAPI document (served at /openapi.json with the core's,
which adds what the core does to every command: Idempotency-Key, 401, 409, 413, 415,
422, 503)."""

from __future__ import annotations

from typing import Any

from cqrs_warehouse.web.openapi import READ_YOUR_WRITES, consistent_read, error_response

from .commands import MAX_COMMAND_QUANTITY, SKU_PATTERN


def _command(summary: str, event: str, refusal: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": f"Emits {event} v1 in the same transaction as the state change.",
            "parameters": [{"$ref": "#/components/parameters/Sku"}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/QuantityCommand"}}
                },
            },
            "responses": {
                "200": {
                    "description": "Accepted: the state changed and the event is in the outbox.",
                    "headers": {
                        "X-Consistency-Token": {"$ref": "#/components/headers/ConsistencyToken"}
                    },
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CommandAccepted"}
                        }
                    },
                },
                "400": error_response(
                    "Nothing changed: a body that is not JSON or not {quantity}, an invalid "
                    f"SKU or quantity, or {refusal}."
                ),
            },
        }
    }


QUANTITY_COMMAND: dict[str, Any] = {
    "type": "object",
    "properties": {
        # A number with an integral value: 5.0 is 5 (JSON Schema's integer).
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_COMMAND_QUANTITY},
    },
    "required": ["quantity"],
    "additionalProperties": False,
}

_PRODUCT = {"$ref": "#/components/schemas/Product"}

FRAGMENT: dict[str, Any] = {
    "paths": {
        "/warehouse/products": {
            "get": {
                "summary": "The products view, sorted by SKU.",
                "parameters": READ_YOUR_WRITES,
                "responses": consistent_read(
                    {
                        "description": "Quantity per SKU ([] when empty).",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": _PRODUCT}}
                        },
                    }
                ),
            }
        },
        "/warehouse/products/{sku}": {
            "get": {
                "summary": "One SKU of the products view (quantity 0 if never seen).",
                "parameters": [{"$ref": "#/components/parameters/Sku"}, *READ_YOUR_WRITES],
                "responses": consistent_read(
                    {
                        "description": "The SKU's quantity.",
                        "content": {"application/json": {"schema": _PRODUCT}},
                    },
                    invalid="An invalid SKU. ",
                ),
            }
        },
        "/warehouse/products/{sku}/increase_quantity": _command(
            "Increase the quantity on hand.",
            "Warehouse.Events.ProductQuantityIncreased",
            "a stock that would pass 2^63-1",
        ),
        "/warehouse/products/{sku}/ship_quantity": _command(
            "Ship a quantity.",
            "Warehouse.Events.ProductQuantityShipped",
            'more than is on hand: "Insufficient quantity on hand."',
        ),
    },
    "components": {
        "parameters": {
            "Sku": {
                "name": "sku",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": SKU_PATTERN, "maxLength": 64},
            }
        },
        "schemas": {
            "QuantityCommand": QUANTITY_COMMAND,
            "CommandAccepted": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "quantity": {"type": "integer"},
                    "message_id": {"type": "string"},
                    "consistency_token": {"type": "string"},
                },
                "required": ["sku", "quantity", "message_id", "consistency_token"],
            },
            "Product": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["sku", "quantity"],
            },
        },
    },
}
