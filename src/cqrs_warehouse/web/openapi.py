"""The OpenAPI document served at /openapi.json: the core's routes and every slice's fragment.

Slices write their fragment with ``error_response`` and ``READ_YOUR_WRITES``;
``document`` merges the fragments' paths and components into the core's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ..messaging.errors import ConfigurationError

_ERROR = {"$ref": "#/components/schemas/Error"}


def error_response(description: str) -> dict[str, Any]:
    """An error answer: JSON ``{"title", "description"}``."""
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


#: The parameters of a read that may carry a consistency token.
READ_YOUR_WRITES: list[dict[str, Any]] = [
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

_CORE: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "cqrs-warehouse",
        "version": "1",
        "description": "Commands change state and emit events through a transactional "
        "outbox; views are eventually consistent.",
    },
    "paths": {
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
                    "503": error_response("A dependency does not answer; the title names it."),
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
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
                "required": ["title"],
            },
        },
    },
}


def document(fragments: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The core's document with each (slice name, fragment) merged in; a path or
    component that two of them declare is refused."""
    merged = copy.deepcopy(_CORE)
    for name, fragment in fragments:
        for path, item in fragment.get("paths", {}).items():
            _add(merged["paths"], path, item, name)
        for kind, entries in fragment.get("components", {}).items():
            section = merged["components"].setdefault(kind, {})
            for key, value in entries.items():
                _add(section, key, value, name)
    return merged


def _add(section: dict[str, Any], key: str, value: Any, slice_name: str) -> None:
    if key in section:
        raise ConfigurationError(f"slice {slice_name}: its OpenAPI fragment declares {key!r} again")
    section[key] = copy.deepcopy(value)
