"""The API's OpenAPI document, served at /openapi.json, and the request-body
validation derived from it. Used by web.py; kept true by tests/db/test_openapi.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from .warehouse.commands import MAX_COMMAND_QUANTITY

SKU_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


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
                "400": _error("Invalid SKU or quantity" + extra_errors + "; nothing changed."),
                "401": _error("API_TOKEN is set and the bearer token is missing or wrong."),
                "405": _error("Method not allowed."),
                "413": _error("The body is larger than the limit."),
                "415": _error("The body is not JSON."),
                "503": _error("The database is unreachable; nothing changed."),
            },
        }
    }


_READ_YOUR_WRITES: list[dict[str, Any]] = [
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "A consistency_token from a command: answer once the view applied it.",
        "schema": {"type": "string"},
    },
    {
        "name": "X-Consistency-Token",
        "in": "header",
        "required": False,
        "description": "The same token, as a header.",
        "schema": {"type": "string"},
    },
]

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "cqrs-warehouse",
        "version": "1",
        "description": "Commands change the warehouse and emit events through a transactional "
        "outbox; the products view is eventually consistent.",
    },
    "paths": {
        "/warehouse/products": {
            "get": {
                "summary": "The products view, sorted by SKU.",
                "parameters": _READ_YOUR_WRITES,
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
                    "400": _error("Invalid consistency token."),
                    "405": _error("Method not allowed."),
                    "503": _error(
                        "The database is unreachable, or the view has not applied the "
                        "token's write in time (Retry-After)."
                    ),
                },
            }
        },
        "/warehouse/products/{sku}": {
            "get": {
                "summary": "One SKU of the products view (quantity 0 if never seen).",
                "parameters": [{"$ref": "#/components/parameters/Sku"}, *_READ_YOUR_WRITES],
                "responses": {
                    "200": {
                        "description": "The SKU's quantity.",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Product"}}
                        },
                    },
                    "400": _error("Invalid SKU or consistency token."),
                    "405": _error("Method not allowed."),
                    "503": _error(
                        "The database is unreachable, or the view has not applied the "
                        "token's write in time (Retry-After)."
                    ),
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
        "/livez": {
            "get": {
                "summary": "The process is up.",
                "responses": {"200": {"description": "Alive."}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and the broker answer.",
                "responses": {
                    "200": {"description": "Ready."},
                    "503": _error("A dependency does not answer; the title names it."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "responses": {"200": {"description": "Prometheus text format."}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3.1."}},
            }
        },
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
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "QuantityCommand": {
                "type": "object",
                "properties": {
                    "quantity": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_COMMAND_QUANTITY,
                    }
                },
                "required": ["quantity"],
                "additionalProperties": False,
            },
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
            "Error": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                "required": ["title"],
            },
        },
    },
}


def _strict_integer(checker: Any, instance: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; a quantity sent as 1.0 is refused.
    return isinstance(instance, int) and not isinstance(instance, bool)


_TYPES = Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer)
_Validator = jsonschema.validators.extend(Draft202012Validator, type_checker=_TYPES)


@dataclass(frozen=True)
class _Validation:
    schema: dict[str, Any]  # a copy of the schema the two checks were built from
    validator: Any
    accepts: Callable[[Any], bool] | None


_validations: dict[str, _Validation] = {}


def _validation(schema_name: str) -> _Validation:
    """The checks of components/schemas/<schema_name>, rebuilt whenever the
    document's schema differs from the one they were built from (compared by
    value, so a validator follows any change to the document)."""
    schema = DOCUMENT["components"]["schemas"][schema_name]
    validation = _validations.get(schema_name)
    if validation is None or validation.schema != schema:
        schema = copy.deepcopy(schema)
        validation = _validations[schema_name] = _Validation(
            schema=schema,
            validator=_Validator({**schema, "$defs": {}}),
            accepts=_plain_check(schema),
        )
    return validation


def _plain_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A plain-Python test that accepts only what ``schema`` accepts, for
    schemas written with the few keywords the command bodies use (an object
    of bounded integers); None for any other schema.

    jsonschema spends some tens of microseconds on a body, which was the
    largest share of the command resource's own CPU: bodies this test
    accepts skip it. It never refuses: a body it does not accept goes to
    jsonschema, which decides and says why.
    """
    if (
        set(schema) - {"type", "properties", "required", "additionalProperties"}
        or schema.get("type") != "object"
        or schema.get("additionalProperties", True) is not False
    ):
        return None
    bounds: dict[str, tuple[Any, Any]] = {}
    for name, field in schema.get("properties", {}).items():
        if set(field) - {"type", "minimum", "maximum"} or field.get("type") != "integer":
            return None
        bounds[name] = (field.get("minimum"), field.get("maximum"))
    required = tuple(schema.get("required", ()))
    if not set(required) <= set(bounds):
        return None

    def accepts(body: Any) -> bool:
        # type(...) is, not isinstance: bool is an int, and a subclass goes to jsonschema.
        if type(body) is not dict or any(name not in body for name in required):
            return False
        for name, value in body.items():
            if name not in bounds or type(value) is not int:
                return False
            low, high = bounds[name]
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        return True

    return accepts


def request_body_errors(schema_name: str, body: Any) -> list[str]:
    """Why ``body`` does not fit components/schemas/<schema_name>, one line per problem."""
    validation = _validation(schema_name)
    if validation.accepts is not None and validation.accepts(body):
        return []
    problems = []
    for error in sorted(validation.validator.iter_errors(body), key=lambda e: list(e.path)):
        where = ".".join(str(p) for p in error.path)
        problems.append(f"{where}: {error.message}" if where else error.message)
    return problems
