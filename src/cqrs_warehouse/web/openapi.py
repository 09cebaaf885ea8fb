"""The OpenAPI document served at /openapi.json: the core's routes and every slice's fragment.

Slices write their fragment with ``error_response``, ``READ_YOUR_WRITES`` and
``consistent_read``; ``document`` merges the fragments' paths and components
into the core's, then adds what the core's middleware does to every
operation: the X-Request-ID header, and on every command POST the
Idempotency-Key header, the bearer token (when API_TOKEN is set) and the
refusals of the middleware (401, 409, 413, 415, 422, 503).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ..messaging.errors import ConfigurationError

#: A consistency token as the API accepts it (urlsafe base64 without padding).
CONSISTENCY_TOKEN_PATTERN = "^[A-Za-z0-9_-]{1,256}$"
#: 1 to 255 visible ASCII characters, or the IETF draft's sf-string form, quoted
#: (a value that starts with a quote is that form; inside, no quote or backslash).
IDEMPOTENCY_KEY_PATTERN = '^(?:"[!#-\\[\\]-~]{1,255}"|[!#-~][!-~]{0,254})$'
#: An X-Request-ID the API takes as the correlation id (others are replaced).
REQUEST_ID_PATTERN = "^[A-Za-z0-9._:-]{1,128}$"

_ERROR = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
_WRITE_METHODS = ("post", "put", "patch", "delete")


def error_response(description: str, *, retry_after: bool = False) -> dict[str, Any]:
    """An error answer: JSON ``{"title", "description"}``; ``retry_after``: with that header."""
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ERROR}},
    }
    if retry_after:
        response["headers"] = dict(_RETRY_AFTER)
    return response


#: The parameters of a read that may carry a consistency token.
READ_YOUR_WRITES: list[dict[str, Any]] = [
    {"$ref": "#/components/parameters/After"},
    {"$ref": "#/components/parameters/ConsistencyToken"},
]


def consistent_read(ok: dict[str, Any], invalid: str = "") -> dict[str, Any]:
    """The responses of a read with READ_YOUR_WRITES: ``ok`` (200), 400, 503.
    ``invalid``: what else than the token the read refuses with 400."""
    return {
        "200": ok,
        "400": error_response(
            f"{invalid}A malformed consistency token, or one beyond what the command side "
            "has issued for its stream; the title names the field."
        ),
        "503": error_response(
            "Not consistent within CONSISTENCY_TIMEOUT, too many reads waiting, or the "
            "database is unavailable (Retry-After).",
            retry_after=True,
        ),
    }


_STRING = {"type": "string"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_COMMAND_RESPONSES: dict[str, Any] = {
    "409": error_response(
        "A request with the same Idempotency-Key is still in progress (Retry-After).",
        retry_after=True,
    ),
    "413": error_response("The body is larger than MAX_BODY_BYTES."),
    "415": error_response("The body is not application/json."),
    "422": error_response("The Idempotency-Key was used with another request."),
    "503": error_response(
        "The database is unavailable (nothing changed), or the outcome is unknown: retry "
        "with the same Idempotency-Key (Retry-After).",
        retry_after=True,
    ),
}
_UNAUTHORIZED = error_response("The bearer token (API_TOKEN) is missing or wrong.")

_CORE: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "cqrs-warehouse",
        "version": "1",
        "description": "Commands change state and emit events through a transactional "
        "outbox; views are eventually consistent. Errors are JSON {title, description}. "
        "An unknown path is a 404, a method a path does not serve a 405 with Allow.",
    },
    "paths": {
        "/livez": {
            "get": {
                "summary": "The process is up.",
                "responses": {"200": {"description": "Alive.", "content": _json({})}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "The database and the broker answer.",
                "responses": {
                    "200": {"description": "Ready.", "content": _json({})},
                    "503": error_response(
                        "A dependency does not answer; the title names it.", retry_after=True
                    ),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": _STRING}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": _json({})}},
            }
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "parameters": {
            "After": {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "A consistency_token from a command: answer once the view "
                "applied it.",
                "schema": {
                    "type": "string",
                    "pattern": CONSISTENCY_TOKEN_PATTERN,
                    "maxLength": 256,
                },
            },
            "ConsistencyToken": {
                "name": "X-Consistency-Token",
                "in": "header",
                "required": False,
                "description": "The same token, as a header.",
                "schema": {
                    "type": "string",
                    "pattern": CONSISTENCY_TOKEN_PATTERN,
                    "maxLength": 256,
                },
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A retry with the same key and request answers the first "
                "answer and applies nothing again (draft-ietf-httpapi-idempotency-key-header).",
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 257},
            },
            "RequestId": {
                "name": "X-Request-ID",
                "in": "header",
                "required": False,
                "description": "The correlation id of the request's log lines, when it "
                f"matches {REQUEST_ID_PATTERN}; otherwise a new one is made.",
                "schema": _STRING,
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request's correlation id.",
                "required": True,
                "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
            },
            "RetryAfter": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "integer", "minimum": 0},
            },
            "ConsistencyToken": {
                "description": "Read-your-writes token (also in the body).",
                "required": True,
                "schema": {"type": "string", "pattern": CONSISTENCY_TOKEN_PATTERN},
            },
            "IdempotentReplayed": {
                "description": "The first answer to this Idempotency-Key, replayed.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"title": _STRING, "description": _STRING},
                "required": ["title"],
            },
        },
    },
}


def document(
    fragments: Iterable[tuple[str, Mapping[str, Any]]], *, secured: bool = False
) -> dict[str, Any]:
    """The core's document with each (slice name, fragment) merged in, and what the
    core's middleware does added to each operation; ``secured``: API_TOKEN is set.
    A path or component that two of them declare is refused."""
    merged = copy.deepcopy(_CORE)
    for name, fragment in fragments:
        for path, item in fragment.get("paths", {}).items():
            _add(merged["paths"], path, item, name)
        for kind, entries in fragment.get("components", {}).items():
            section = merged["components"].setdefault(kind, {})
            for key, value in entries.items():
                _add(section, key, value, name)
    for item in merged["paths"].values():
        for method, operation in item.items():
            if method == "parameters":
                continue
            parameters = operation.setdefault("parameters", [])
            parameters.append({"$ref": "#/components/parameters/RequestId"})
            if method in _WRITE_METHODS:
                _command(operation, secured)
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = {
                    "$ref": "#/components/headers/RequestId"
                }
    return merged


def _command(operation: dict[str, Any], secured: bool) -> None:
    """What the middleware and the idempotency keys add to a command."""
    operation["parameters"].append({"$ref": "#/components/parameters/IdempotencyKey"})
    responses = operation["responses"]
    refused = copy.deepcopy(responses.get("400") or error_response("Invalid request."))
    refused["description"] += " Or a malformed Idempotency-Key."
    responses["400"] = refused
    for status in ("200", "400"):  # the answers a key remembers
        responses[status].setdefault("headers", {})["Idempotent-Replayed"] = {
            "$ref": "#/components/headers/IdempotentReplayed"
        }
    for status, response in _COMMAND_RESPONSES.items():
        responses.setdefault(status, copy.deepcopy(response))
    if secured:
        operation["security"] = [{"bearer": []}]
        responses["401"] = copy.deepcopy(_UNAUTHORIZED)
    else:
        operation.pop("security", None)


def _add(section: dict[str, Any], key: str, value: Any, slice_name: str) -> None:
    if key in section:
        raise ConfigurationError(f"slice {slice_name}: its OpenAPI fragment declares {key!r} again")
    section[key] = copy.deepcopy(value)
