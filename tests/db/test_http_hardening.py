"""HTTP hardening: bearer token on writes, body size limit, JSON-only bodies,
JSON errors for unknown routes and wrong methods; bad input (deep or broken
JSON, tokens, Idempotency-Keys, SKUs of another shape) is a 400, never a 5xx;
the metrics' method label comes from a fixed set. Under Falcon's test client
on SQLite and PostgreSQL, over a runtime with API_TOKEN and MAX_BODY_BYTES set.
(A chunked body through gunicorn: the processes tier.)"""

from __future__ import annotations

import json

import falcon.testing
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.web import create_app
from tests.conftest import settings_for
from tests.slices.returns import ReturnCount
from tests.support.processes import free_port

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


# --- bad input is a 400, never a 5xx ------------------------------------------

DEEP = 10_000  # nestings: far past the parser's depth, within MAX_BODY_BYTES' default


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEEP,
        b'{"quantity": ' + b"[" * DEEP,
        b'{"quantity": 1' + b"}" * DEEP,
        b'{"quantity": "\xff\xfe"}',
        b"\xc3\x28",
        b'{"quantity": 1',
        b'{"quantity": 1e999999}',
        b'{"quantity": NaN}',
        b'{"quantity": ' + b"9" * 5000 + b"}",
    ],
    ids=[
        "deep-list",
        "deep-in-object",
        "unbalanced",
        "bad-utf8-string",
        "bad-utf8",
        "truncated",
        "infinite",
        "nan",
        "5000-digits",
    ],
)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_body_that_is_not_json_or_too_deep_is_a_400(client, sku, command, body):
    response = client.simulate_post(
        f"/warehouse/products/{sku}/{command}",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert_json_error(response, 400)
    assert_nothing_changed(sku)


@pytest.fixture
def unreachable(runtime):
    """The API over a database that does not answer (nothing listens on its port)."""
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    down = build(settings_for(nowhere), embedded=True)
    yield falcon.testing.TestClient(create_app(down))
    down.database.close()
    runtime.bind_models()


BAD_TOKENS = {
    "empty": "",
    "257-characters": "A" * 257,
    "padding": "WyJhIiwxXQ==",
    "plus-slash": "a+b/c",
    "space": "a b",
    "non-ascii": "é",
}


@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
@pytest.mark.parametrize(
    "path", ["/warehouse/products", "/warehouse/products/{sku}", "/returns/{sku}"]
)
@pytest.mark.parametrize("where", ["after", "X-Consistency-Token"])
def test_a_token_of_another_shape_is_a_400_naming_it_before_any_database_work(
    unreachable, sku, path, where, token
):
    # The database does not answer: anything that reached it would be a 503.
    options = (
        {"params": {"after": token}}
        if where == "after"
        else {"headers": {"X-Consistency-Token": token.encode().decode("latin-1")}}
    )
    response = unreachable.simulate_get(path.format(sku=sku), **options)
    body = assert_json_error(response, 400)
    assert body["title"] == "Invalid consistency token."
    assert where in body["description"]


def test_a_token_of_the_right_shape_that_is_not_a_token_is_a_400(client, sku):
    response = client.simulate_get("/warehouse/products", params={"after": "A" * 256})
    assert_json_error(response, 400)


@pytest.mark.parametrize(
    "key",
    ["", "with space", "k" * 256, "tab\there", '"unterminated', '"in"side"', '""'],
    ids=repr,
)
@pytest.mark.parametrize(
    "path", [*(f"/warehouse/products/{{sku}}/{c}" for c in COMMANDS), "/returns/{sku}"]
)
def test_a_malformed_idempotency_key_is_a_400_naming_it(guarded, sku, path, key):
    response = guarded.simulate_post(
        path.format(sku=sku), json={"quantity": 1}, headers={**AUTH, "Idempotency-Key": key}
    )
    body = assert_json_error(response, 400)
    assert body["title"] == "Invalid Idempotency-Key."
    assert_nothing_changed(sku)


@pytest.mark.parametrize("key", ["k", "~" * 255, '"quoted-key"', "a\"b'c\\d"], ids=repr)
def test_a_well_formed_idempotency_key_passes(guarded, sku, key):
    response = guarded.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity",
        json={"quantity": 1},
        headers={**AUTH, "Idempotency-Key": key},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/returns/{sku}", "/warehouse/products/{sku}"])
@pytest.mark.parametrize("bad_sku", ["a" * 65, "a%20b", "caf%C3%A9", "a:b"], ids=repr)
def test_a_bad_sku_in_a_read_or_a_return_is_a_400(guarded, sku, path, bad_sku):
    assert_json_error(guarded.simulate_get(path.format(sku=bad_sku)), 400)
    if path.startswith("/returns"):
        response = guarded.simulate_post(
            path.format(sku=bad_sku), json={"quantity": 1}, headers=AUTH
        )
        assert_json_error(response, 400)
        assert ReturnCount.select().count() == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
def test_a_method_a_route_does_not_serve_is_a_405_even_without_the_token(guarded, method):
    response = guarded.simulate_request(method, "/warehouse/products", json={"quantity": 1})
    assert_json_error(response, 405)
    assert response.headers["Allow"]


# --- metrics labels ------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")  # (Falcon's test client's WSGI check)
def test_the_metrics_method_label_comes_from_a_fixed_set(client, sku):
    for method in ("FOOBAR", "GET", "BREW", "get"):
        client.simulate_request(method, "/x")
    client.simulate_request("PROPFIND", "/warehouse/products")
    text = client.simulate_get("/metrics").text
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "cqrs_http_requests":
            for sample in family.samples:
                if sample.name == "cqrs_http_requests_total":
                    labels = sample.labels
                    counts[(labels["route"], labels["method"])] = sample.value
    assert counts[("unmatched", "other")] == 3  # FOOBAR, BREW, get
    assert counts[("unmatched", "GET")] == 1
    assert counts[("/warehouse/products", "other")] == 1
    assert {method for _, method in counts} <= {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "other",
    }
