"""Request bodies checked against a JSON Schema (an OpenAPI document's). For slices' resources.

The rules are JSON Schema's: an ``integer`` is a number with an integral value
(5.0 is one; 5.5, "5" and true are not); a resource that needs an int takes
``int(value)`` of a body this accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator


class BodyValidator:
    """Why a body does not fit ``schema``: one line per problem, none if it fits."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        self._validator = Draft202012Validator({**schema, "$defs": {}})
        self._accepts = _plain_check(schema)

    def errors(self, body: Any) -> list[str]:
        if self._accepts is not None and self._accepts(body):
            return []
        problems = []
        for error in sorted(self._validator.iter_errors(body), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in error.path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        return problems


def _plain_check(schema: dict[str, Any]) -> Callable[[Any], bool] | None:
    """A plain-Python test that accepts only what ``schema`` accepts, for
    schemas written with the few keywords of an object of bounded integers;
    None for any other schema. Bodies this test accepts skip jsonschema, the
    largest share of a command resource's CPU (docs/decisions/0015); it never
    refuses: jsonschema decides the others and says why.
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
        # type(...) is, not isinstance: bool is an int; a float or a subclass goes to jsonschema.
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
