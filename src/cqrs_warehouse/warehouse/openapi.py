"""The warehouse's part of the OpenAPI document (served at /openapi.json with the core's)."""

from __future__ import annotations

from typing import Any

from cqrs_warehouse.web.openapi import READ_YOUR_WRITES, error_response

from .commands import MAX_COMMAND_QUANTITY, SKU_PATTERN


def _command(summary: str, event: str, extra_errors: str = "") -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": f"Emits {event} v1 in the same transaction as the state change.",
            "security": [{}, {"bearer": []}],
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
                        "X-Consistency-Token": {
                            "description": "Read-your-writes token (also in the body).",
                            "schema": {"type": "string"},
                        }
                    },
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CommandAccepted"}
                        }
                    },
                },
                "400": error_response(
                    "Invalid SKU or quantity" + extra_errors + "; nothing changed."
                ),
                "401": error_response("API_TOKEN is set and the bearer token is missing or wrong."),
                "405": error_response("Method not allowed."),
                "413": error_response("The body is larger than the limit."),
                "415": error_response("The body is not JSON."),
                "503": error_response("The database is unreachable; nothing changed."),
            },
        }
    }


_NOT_CONSISTENT_YET = error_response(
    "The database is unreachable, or the view has not applied the token's write in time "
    "(Retry-After)."
)

QUANTITY_COMMAND: dict[str, Any] = {
    "type": "object",
    "properties": {
        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_COMMAND_QUANTITY},
    },
    "required": ["quantity"],
    "additionalProperties": False,
}

FRAGMENT: dict[str, Any] = {
    "paths": {
        "/warehouse/products": {
            "get": {
                "summary": "The products view, sorted by SKU.",
                "parameters": READ_YOUR_WRITES,
                "responses": {
                    "200": {
                        "description": "Quantity per SKU ([] when empty).",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/Product"},
                                }
                            }
                        },
                    },
                    "400": error_response("Invalid consistency token."),
                    "405": error_response("Method not allowed."),
                    "503": _NOT_CONSISTENT_YET,
                },
            }
        },
        "/warehouse/products/{sku}": {
            "get": {
                "summary": "One SKU of the products view (quantity 0 if never seen).",
                "parameters": [{"$ref": "#/components/parameters/Sku"}, *READ_YOUR_WRITES],
                "responses": {
                    "200": {
                        "description": "The SKU's quantity.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Product"}}
                        },
                    },
                    "400": error_response("Invalid SKU or consistency token."),
                    "405": error_response("Method not allowed."),
                    "503": _NOT_CONSISTENT_YET,
                },
            }
        },
        "/warehouse/products/{sku}/increase_quantity": _command(
            "Increase the quantity on hand.",
            "Warehouse.Events.ProductQuantityIncreased",
            ", or a stock that would pass 2^63-1",
        ),
        "/warehouse/products/{sku}/ship_quantity": _command(
            "Ship a quantity.",
            "Warehouse.Events.ProductQuantityShipped",
            ', or "Insufficient quantity on hand."',
        ),
    },
    "components": {
        "parameters": {
            "Sku": {
                "name": "sku",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": SKU_PATTERN},
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
