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
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.openapi import QUANTITY_COMMAND
from cqrs_warehouse.web import create_app, openapi
from cqrs_warehouse.web.validation import BodyValidator
from tests.conftest import settings_for
from tests.support.processes import free_port

TOKEN = "ops-openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
BAD_KEY = {**AUTH, "Idempotency-Key": "with space"}
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
def guarded(runtime_with) -> falcon.testing.TestClient:
    """The API with API_TOKEN set, a small body limit and no waiting for tokens."""
    return falcon.testing.TestClient(
        create_app(runtime_with(api_token=TOKEN, max_body_bytes=MAX_BODY, consistency_timeout=0.0))
    )


@pytest.fixture
def guarded_document(guarded) -> dict[str, Any]:
    return guarded.simulate_get("/openapi.json").json


@pytest.fixture
def recorded(guarded, runtime, sku) -> Recorder:
    """Drive every documented response of the API; returns what was sent."""
    recorder = Recorder()
    client = guarded
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
        send(client, "POST", template, path, json={"quantity": 1}, headers=BAD_KEY)
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
    send(client, "GET", one, f"{products}/{sku}", headers={"X-Consistency-Token": "x" * 257})
    send(client, "DELETE", one, f"{products}/{sku}", headers=AUTH)
    for template in ("/livez", "/readyz", "/metrics", "/openapi.json"):
        send(client, "GET", template)
    # The tests' returns slice
    returns, at = "/returns/{sku}", f"/returns/{sku}"
    returned = send(client, "POST", returns, at, json={"quantity": 2}, headers=AUTH)
    send(client, "POST", returns, at, json={"quantity": 0}, headers=AUTH)
    send(client, "POST", returns, at, json={"quantity": 1})
    send(client, "POST", returns, at, body="x" * (MAX_BODY + 1), headers={**AUTH, **JSON})
    send(client, "POST", returns, at, body="1", headers={**AUTH, "Content-Type": "text/plain"})
    send(client, "GET", returns, at)
    send(client, "GET", returns, at, params={"after": "not a token"})
    send(client, "GET", returns, at, params={"after": returned.json["consistency_token"]})
    send(client, "PUT", returns, at, headers=AUTH)

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
        send(down, "POST", returns, at, json={"quantity": 1}, headers=AUTH)
        send(down, "GET", returns, at)
        send(down, "GET", "/readyz")
    finally:
        unreachable.database.close()
        runtime.bind_models()
    return recorder


#: Documented, and produced by the idempotency keys' tests (a retry whose first
#: request is still running; a key reused with another body).
PRODUCED_ELSEWHERE = {409, 422}


def test_every_documented_response_is_produced(recorded, guarded_document):
    produced = {(c.template, c.method, c.status) for c in recorded.calls}
    missing = [
        key
        for key in documented_responses(guarded_document)
        if key not in produced and key[2] not in PRODUCED_ELSEWHERE
    ]
    assert not missing, f"documented but never produced: {missing}"


def resolve(node: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """``node``, or what its $ref names in ``document``."""
    if "$ref" not in node:
        return node
    target: Any = document
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


def test_every_response_is_documented_and_its_json_body_fits_the_schema(recorded, guarded_document):
    document = guarded_document
    documented = documented_responses(document)
    problems: dict[str, list[str]] = defaultdict(list)
    for call in recorded.calls:
        where = f"{call.method.upper()} {call.template} -> {call.status}"
        if call.status == 405:
            # Falcon's, for a method the path does not serve (the document's description).
            assert call.method not in document["paths"][call.template], where
            assert call.response.headers["Allow"], where
            continue
        spec = documented.get((call.template, call.method, call.status))
        if spec is None:
            problems[where].append(f"undocumented response: {call.response.text}")
            continue
        for name, header in spec.get("headers", {}).items():
            header = resolve(header, document)
            value = call.response.headers.get(name)
            if value is None:
                if header.get("required"):
                    problems[where].append(f"no {name} header")
                continue
            if header["schema"].get("type") == "integer":
                value = int(value)
            for error in schema_validator(header["schema"], document).iter_errors(value):
                problems[where].append(f"{name}: {error.message}")
        content = spec.get("content", {})
        if "text/plain" in content:
            assert call.response.headers["content-type"].startswith("text/plain"), where
            continue
        assert call.response.headers["content-type"].startswith("application/json"), where
        body = json.loads(call.response.text)
        for error in schema_validator(content["application/json"]["schema"], document).iter_errors(
            body
        ):
            problems[where].append(error.message)
    assert not problems, dict(problems)


@pytest.mark.parametrize("api_token", [None, TOKEN], ids=["open", "api-token"])
def test_commands_need_the_bearer_token_in_the_document_only_with_api_token(
    runtime_with, api_token
):
    client = falcon.testing.TestClient(create_app(runtime_with(api_token=api_token)))
    document = client.simulate_get("/openapi.json").json
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            secured = api_token is not None and method == "post"
            assert operation.get("security") == ([{"bearer": []}] if secured else None), path
            assert ("401" in operation["responses"]) == secured, path


def test_every_command_documents_the_idempotency_key_and_the_middlewares_refusals(
    document,
):
    commands = [(path, item["post"]) for path, item in document["paths"].items() if "post" in item]
    assert {path for path, _ in commands} == {
        "/warehouse/products/{sku}/increase_quantity",
        "/warehouse/products/{sku}/ship_quantity",
        "/returns/{sku}",
    }
    for path, operation in commands:
        assert {"$ref": "#/components/parameters/IdempotencyKey"} in operation["parameters"]
        assert {"200", "400", "409", "413", "415", "422", "503"} <= set(operation["responses"])
        for status in ("409", "503"):
            assert "Retry-After" in operation["responses"][status]["headers"], path
        assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"], path


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
    {"quantity": 3.0},
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


def test_an_integral_number_is_the_integer_it_writes(client, sku):
    # JSON Schema counts 5.0 as an integer, and so does the API that publishes the schema.
    path = f"/warehouse/products/{sku}/increase_quantity"
    accepted = client.simulate_post(path, body='{"quantity": 5.0}', headers=JSON)
    assert accepted.status_code == 200, accepted.text
    assert type(accepted.json["quantity"]) is int  # 5, not 5.0, in the answer too
    for refused in ('{"quantity": 5.5}', '{"quantity": "5"}', '{"quantity": 1e300}'):
        assert client.simulate_post(path, body=refused, headers=JSON).status_code == 400
    assert client.simulate_get(f"/warehouse/products/{sku}").status_code == 200
    assert ProductStock.get(ProductStock.sku == sku).quantity == 5


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
