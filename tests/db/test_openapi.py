"""The OpenAPI document (GET /openapi.json): the core's and every slice's
fragment (the tests' returns slice included), complete (every route and method
the Falcon app serves), true (every documented response is produced by some
request here, and every JSON body fits its documented schema), and the source
of the request-body validation. Under Falcon's test client, on SQLite and
PostgreSQL; served through gunicorn: the processes tier."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import falcon
import falcon.inspect
import falcon.testing
import pytest
from jsonschema import Draft202012Validator

from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.openapi import QUANTITY_COMMAND
from cqrs_warehouse.web import create_app, openapi
from cqrs_warehouse.web.validation import BodyValidator
from tests.conftest import settings_for
from tests.support.processes import free_port

TOKEN = "ops-openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 256
METHODS = {"get", "post", "put", "patch", "delete"}


def schema_validator(schema: dict[str, Any], document: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` whose #/components/... references resolve in ``document``."""
    return Draft202012Validator({**schema, "components": document["components"]})


@pytest.fixture
def document(client) -> dict[str, Any]:
    """The document the API serves."""
    response = client.simulate_get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    return response.json


def test_the_document_served_is_the_core_and_every_slices_fragment(runtime, document):
    assert document["openapi"].startswith("3.1")
    expected = openapi.document((s.name, s.openapi) for s in runtime.slices)
    assert document == json.loads(json.dumps(expected))
    assert "/warehouse/products/{sku}/increase_quantity" in document["paths"]
    assert "/returns/{sku}" in document["paths"]  # the tests' second slice


def test_every_route_the_app_serves_is_documented_with_its_methods(runtime, document):
    app = create_app(runtime)
    served = {
        route.path: {m.method.lower() for m in route.methods if not m.internal}
        for route in falcon.inspect.inspect_routes(app)
    }
    documented = {
        path: {method for method in item if method in METHODS}
        for path, item in document["paths"].items()
    }
    assert served == documented


@dataclass
class Call:
    template: str
    method: str
    status: int
    response: falcon.testing.Result


class Recorder:
    """Sends requests to a test client and remembers them by documented path."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def send(
        self,
        client: falcon.testing.TestClient,
        method: str,
        template: str,
        path: str | None = None,
        **options: Any,
    ) -> falcon.testing.Result:
        response = client.simulate_request(method, path or template, **options)
        self.calls.append(Call(template, method.lower(), response.status_code, response))
        return response


def documented_responses(document: dict[str, Any]) -> dict[tuple[str, str, int], dict]:
    return {
        (path, method, int(status)): spec
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS  # (a path item may also hold its "parameters")
        for status, spec in operation["responses"].items()
    }


@pytest.fixture
def recorded(runtime_with, sku) -> Recorder:
    """Drive every documented response of the API; returns what was sent."""
    recorder = Recorder()
    guarded = runtime_with(api_token=TOKEN, max_body_bytes=MAX_BODY, consistency_timeout=0.0)
    client = falcon.testing.TestClient(create_app(guarded))
    send = recorder.send
    products, one = "/warehouse/products", "/warehouse/products/{sku}"
    not_applied = []  # tokens of commands no listener runs to apply
    for command in ("increase_quantity", "ship_quantity"):
        template = f"/warehouse/products/{{sku}}/{command}"
        path = template.format(sku=sku)
        if command == "increase_quantity":
            accepted = send(client, "POST", template, path, json={"quantity": 10}, headers=AUTH)
        else:
            accepted = send(client, "POST", template, path, json={"quantity": 3}, headers=AUTH)
            refused = send(client, "POST", template, path, json={"quantity": 99}, headers=AUTH)
            assert refused.json["title"] == "Insufficient quantity on hand."
        assert accepted.status_code == 200, accepted.text
        not_applied.append(accepted.json["consistency_token"])
        assert accepted.headers["X-Consistency-Token"] == accepted.json["consistency_token"]
        send(client, "POST", template, path, json={"quantity": 0}, headers=AUTH)
        send(client, "POST", template, path, json={"quantity": 1})
        send(client, "GET", template, path)
        send(
            client,
            "POST",
            template,
            path,
            body=json.dumps({"quantity": 1, "pad": "x" * MAX_BODY}),
            headers={**AUTH, "Content-Type": "application/json"},
        )
        send(
            client,
            "POST",
            template,
            path,
            body="quantity=1",
            headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"},
        )
    send(client, "GET", products)
    send(client, "GET", products, params={"after": "not a token"})
    send(client, "GET", products, params={"after": not_applied[0]})
    send(client, "POST", products, headers=AUTH)
    send(client, "GET", one, f"{products}/{sku}")
    send(client, "GET", one, f"{products}/bad*sku")
    send(client, "GET", one, f"{products}/{sku}", headers={"X-Consistency-Token": not_applied[0]})
    send(client, "DELETE", one, f"{products}/{sku}", headers=AUTH)
    for template in ("/livez", "/readyz", "/metrics", "/openapi.json"):
        send(client, "GET", template)
    # The tests' returns slice
    returns = "/returns/{sku}"
    returned = send(client, "POST", returns, f"/returns/{sku}", json={"quantity": 2}, headers=AUTH)
    send(client, "POST", returns, f"/returns/{sku}", json={"quantity": 0}, headers=AUTH)
    send(client, "GET", returns, f"/returns/{sku}")
    send(
        client,
        "GET",
        returns,
        f"/returns/{sku}",
        params={"after": returned.json["consistency_token"]},
    )

    # The same API over a database that does not answer
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    unreachable = build(settings_for(nowhere, api_token=TOKEN), embedded=True)
    try:
        down = falcon.testing.TestClient(create_app(unreachable))
        for command in ("increase_quantity", "ship_quantity"):
            template = f"/warehouse/products/{{sku}}/{command}"
            path = template.format(sku=sku)
            send(down, "POST", template, path, json={"quantity": 1}, headers=AUTH)
        send(down, "GET", products)
        send(down, "GET", one, f"{products}/{sku}")
        send(down, "GET", "/readyz")
    finally:
        unreachable.database.close()
        guarded.bind_models()
    return recorder


def test_every_documented_response_is_produced(recorded, document):
    produced = {(c.template, c.method, c.status) for c in recorded.calls}
    not_allowed_on = {c.template for c in recorded.calls if c.status == 405}
    missing = []
    for path, method, status in documented_responses(document):
        if status == 405:
            # Documented on the path's operation; produced by another method.
            if path not in not_allowed_on:
                missing.append((path, method, status))
        elif (path, method, status) not in produced:
            missing.append((path, method, status))
    assert not missing, f"documented but never produced: {missing}"


def test_every_response_is_documented_and_its_json_body_fits_the_schema(recorded, document):
    documented = documented_responses(document)
    by_path: dict[tuple[str, int], dict] = {}
    for (path, _, status), spec in documented.items():
        by_path[(path, status)] = spec
    problems: dict[str, list[str]] = defaultdict(list)
    for call in recorded.calls:
        where = f"{call.method.upper()} {call.template} -> {call.status}"
        if call.status == 405:
            spec = by_path.get((call.template, 405))
            assert call.method not in document["paths"][call.template]
        else:
            spec = documented.get((call.template, call.method, call.status))
        if spec is None:
            problems[where].append(f"undocumented response: {call.response.text}")
            continue
        content = spec.get("content", {}).get("application/json")
        if content is None:
            continue
        assert call.response.headers["content-type"].startswith("application/json"), where
        body = json.loads(call.response.text)
        for error in schema_validator(content["schema"], document).iter_errors(body):
            problems[where].append(error.message)
        for header in spec.get("headers", {}):
            if header not in call.response.headers:
                problems[where].append(f"no {header} header")
    assert not problems, dict(problems)


def test_an_unknown_route_answers_a_json_error_of_the_documented_shape(client, document):
    response = client.simulate_get("/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    error_schema = {"$ref": "#/components/schemas/Error"}
    schema_validator(error_schema, document).validate(json.loads(response.text))


BODIES = [
    {"quantity": 1},
    {"quantity": 2**31 - 1},
    {"quantity": 0},
    {"quantity": -3},
    {"quantity": 2**31},
    {"quantity": "3"},
    {"quantity": None},
    {"quantity": True},
    {"quantity": 2.5},
    {"quantity": 1, "note": "extra"},
    {},
    [],
    "3",
    7,
]


@pytest.mark.parametrize("body", BODIES, ids=[json.dumps(b) for b in BODIES])
def test_a_body_the_documented_schema_refuses_is_a_400(client, document, sku, body):
    command = document["paths"]["/warehouse/products/{sku}/increase_quantity"]["post"]
    schema = command["requestBody"]["content"]["application/json"]["schema"]
    valid = schema_validator(schema, document).is_valid(body)
    assert (BodyValidator(QUANTITY_COMMAND).errors(body) == []) == valid  # the same verdict
    response = client.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json=body)
    assert response.status_code == (200 if valid else 400), response.text
    if not valid:
        assert response.json["description"]


def test_a_float_quantity_is_refused_even_when_integral(client, sku):
    # JSON Schema counts 1.0 as an integer; the README says a quantity is a JSON integer.
    response = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", body='{"quantity": 1.0}'
    )
    assert response.status_code == 400


def test_request_validation_follows_the_document(runtime, sku, monkeypatch):
    # The command's schema in the warehouse's fragment, narrowed before the app is built.
    monkeypatch.setitem(QUANTITY_COMMAND["properties"]["quantity"], "maximum", 10)
    client = falcon.testing.TestClient(create_app(runtime))
    served = client.simulate_get("/openapi.json").json
    assert served["components"]["schemas"]["QuantityCommand"]["properties"]["quantity"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10,
    }
    path = f"/warehouse/products/{sku}/increase_quantity"
    assert client.simulate_post(path, json={"quantity": 11}).status_code == 400
    assert client.simulate_post(path, json={"quantity": 10}).status_code == 200
