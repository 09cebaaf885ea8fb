"""HTTP hardening: bearer token on writes, body size limit, JSON-only bodies,
JSON errors for unknown routes and wrong methods. Under Falcon's test client
on SQLite and PostgreSQL, over a runtime with API_TOKEN and MAX_BODY_BYTES set.
(A chunked body through gunicorn: the processes tier.)"""

from __future__ import annotations

import json

import falcon.testing
import pytest

from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.web import create_app

TOKEN = "ops-s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMIT = 512
COMMANDS = ("increase_quantity", "ship_quantity")


@pytest.fixture
def guarded(runtime_with) -> falcon.testing.TestClient:
    """The API of a runtime with API_TOKEN and MAX_BODY_BYTES set."""
    return falcon.testing.TestClient(
        create_app(runtime_with(api_token=TOKEN, max_body_bytes=LIMIT))
    )


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(response.text)
    assert body["title"]
    return body


def assert_nothing_changed(sku: str) -> None:
    assert ProductStock.get_or_none(ProductStock.sku == sku) is None
    assert OutboxRecord.select().count() == 0


# --- the bearer token ---------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "authorization",
    [None, f"Basic {TOKEN}", "Bearer wrong-token", "Bearer", f"Token {TOKEN}", f"{TOKEN}"],
    ids=["missing", "basic-scheme", "wrong-token", "empty-token", "other-scheme", "no-scheme"],
)
def test_a_write_without_the_right_bearer_token_is_a_401(guarded, sku, command, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = guarded.simulate_post(
        f"/warehouse/products/{sku}/{command}", json={"quantity": 1}, headers=headers
    )
    body = assert_json_error(response, 401)
    assert "Bearer" in response.headers["WWW-Authenticate"]
    assert TOKEN not in json.dumps(body)
    assert_nothing_changed(sku)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_a_write_with_the_right_bearer_token_is_accepted(guarded, sku, scheme):
    headers = {"Authorization": f"{scheme} {TOKEN}"}
    increase = guarded.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}, headers=headers
    )
    assert increase.status_code == 200, increase.text
    ship = guarded.simulate_post(
        f"/warehouse/products/{sku}/ship_quantity", json={"quantity": 2}, headers=headers
    )
    assert ship.status_code == 200, ship.text
    assert ProductStock.get(ProductStock.sku == sku).quantity == 3


@pytest.mark.parametrize(
    "path",
    [
        "/warehouse/products",
        "/warehouse/products/{sku}",
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ],
)
def test_reads_need_no_token(guarded, sku, path):
    response = guarded.simulate_get(path.format(sku=sku))
    assert response.status_code == 200, response.text


def test_without_api_token_writes_need_no_token(client, sku):
    response = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 1}
    )
    assert response.status_code == 200, response.text


# --- the body -------------------------------------------------------------------


def padded(size: int) -> str:
    """A valid command body of exactly ``size`` bytes (JSON allows trailing spaces)."""
    body = json.dumps({"quantity": 1})
    return body + " " * (size - len(body))


@pytest.mark.parametrize("command", COMMANDS)
def test_a_body_over_the_limit_is_a_413(guarded, sku, command):
    response = guarded.simulate_post(
        f"/warehouse/products/{sku}/{command}",
        body=padded(LIMIT + 1),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert_json_error(response, 413)
    assert_nothing_changed(sku)


def test_a_body_at_the_limit_is_accepted(guarded, sku):
    response = guarded.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity",
        body=padded(LIMIT),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text


# (Merged: test_api.py's 415 test and this file's; both commands, every type.)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data"],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_body_that_is_not_json_is_a_415_and_changes_nothing(guarded, sku, command, content_type):
    response = guarded.simulate_post(
        f"/warehouse/products/{sku}/{command}",
        body='{"quantity": 1}',
        headers={**AUTH, "Content-Type": content_type},
    )
    assert_json_error(response, 415)
    assert_nothing_changed(sku)


# --- routes and methods ----------------------------------------------------------


# (Merged: test_api.py's unknown routes and this file's.)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/nowhere",
        "/warehouse",
        "/warehouse/product",
        "/warehouse/products/a/b/c",
        "/warehouse/products/abc/explode_quantity",
    ],
)
def test_an_unknown_route_is_a_json_404_whatever_the_client_accepts(guarded, sku, method, path):
    response = guarded.simulate_request(
        method, path, json={"quantity": 1}, headers={**AUTH, "Accept": "text/html"}
    )
    assert_json_error(response, 404)
    assert_nothing_changed(sku)


# (Merged: test_api.py's wrong methods and this file's.)
@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/warehouse/products/{sku}/increase_quantity", "POST"),
        ("GET", "/warehouse/products/{sku}/ship_quantity", "POST"),
        ("PUT", "/warehouse/products/{sku}/increase_quantity", "POST"),
        ("DELETE", "/warehouse/products/{sku}/ship_quantity", "POST"),
        ("POST", "/warehouse/products", "GET"),
        ("PATCH", "/warehouse/products", "GET"),
        ("DELETE", "/warehouse/products", "GET"),
        ("PUT", "/warehouse/products/{sku}", "GET"),
        ("POST", "/livez", "GET"),
        ("POST", "/metrics", "GET"),
    ],
)
def test_a_wrong_method_is_a_json_405_and_changes_nothing(guarded, sku, method, path, allowed):
    response = guarded.simulate_request(
        method,
        path.format(sku=sku),
        json={"quantity": 1},
        headers={**AUTH, "Accept": "text/html"},
    )
    assert_json_error(response, 405)
    assert allowed in response.headers["Allow"]
    assert_nothing_changed(sku)
