"""The REST API under Falcon's test client, on SQLite and PostgreSQL, with no
broker: commands leave their events in the outbox, errors are JSON and change
nothing. (Tokens, limits, media types, unknown routes and methods:
test_http_hardening.py.)"""

import json

import pytest

from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.testing import feed
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED, PRODUCT_QUANTITY_SHIPPED
from tests.db.listening import warehouse_handler

PRODUCTS = "/warehouse/products"


@pytest.fixture
def pending_messages(runtime):
    return runtime.outbox.pending


def increase_path(sku):
    return f"{PRODUCTS}/{sku}/increase_quantity"


def ship_path(sku):
    return f"{PRODUCTS}/{sku}/ship_quantity"


def on_hand(sku):
    row = ProductStock.get_or_none(ProductStock.sku == sku)
    return None if row is None else row.quantity


@pytest.fixture
def summary(pending_messages):
    return lambda: [(m.type, m.payload) for m in pending_messages()]


@pytest.fixture
def see_in_view(runtime):
    """Seed the products view as its listener would, from (type, sku, quantity)."""
    view = warehouse_handler(runtime, "view")

    def seed(*events):
        for message_type, sku, quantity in events:
            message = Message(message_type, 1, {"sku": sku, "quantity": quantity})
            feed(runtime.engine, view, message)

    return seed


def assert_json_error(response, status, *, title=None):
    """A JSON error response with ``status``, a title and a description saying what was wrong."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(response.text)
    assert body["title"]
    if title is not None:
        assert body["title"] == title
    return body


def assert_helpful_400(response):
    body = assert_json_error(response, 400)
    assert isinstance(body.get("description"), str) and len(body["description"]) > 10
    return body


# --- GET /warehouse/products ------------------------------------------------


def test_products_is_an_empty_list_when_nothing_was_seen(client):
    """Scenario 1."""
    response = client.simulate_get(PRODUCTS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json == []


def test_products_lists_the_view_sorted_by_sku(client, see_in_view, sku):
    see_in_view(
        (PRODUCT_QUANTITY_INCREASED, f"{sku}-c", 3),
        (PRODUCT_QUANTITY_INCREASED, f"{sku}-a", 30),
        (PRODUCT_QUANTITY_SHIPPED, f"{sku}-a", 20),
        (PRODUCT_QUANTITY_INCREASED, f"{sku}-b", 2),
    )
    assert client.simulate_get(PRODUCTS).json == [
        {"sku": f"{sku}-a", "quantity": 10},
        {"sku": f"{sku}-b", "quantity": 2},
        {"sku": f"{sku}-c", "quantity": 3},
    ]


def test_products_reads_the_view_not_the_command_state(client, sku):
    client.simulate_post(increase_path(sku), json={"quantity": 5})
    assert client.simulate_get(PRODUCTS).json == []


# --- POST increase / ship: success ------------------------------------------


def test_increase_returns_200_and_leaves_increased_in_the_outbox(
    client, summary, pending_messages, sku
):
    """Scenario 2."""
    response = client.simulate_post(increase_path(sku), json={"quantity": 50})
    assert response.status_code == 200
    assert summary() == [(PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": 50})]
    assert response.json["message_id"] == pending_messages()[0].id
    assert on_hand(sku) == 50


def test_increase_accepts_json_with_a_charset(client, sku):
    response = client.simulate_post(
        increase_path(sku),
        body=b'{"quantity": 5}',
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 200
    assert on_hand(sku) == 5


def test_ship_of_part_of_the_stock_returns_200_and_leaves_shipped(client, summary, sku):
    """Scenario 6."""
    client.simulate_post(increase_path(sku), json={"quantity": 50})
    response = client.simulate_post(ship_path(sku), json={"quantity": 40})
    assert response.status_code == 200
    assert summary() == [
        (PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": 50}),
        (PRODUCT_QUANTITY_SHIPPED, {"sku": sku, "quantity": 40}),
    ]
    assert on_hand(sku) == 10


def test_ship_of_everything_on_hand_returns_200(client, sku):
    """Scenario 5, ship 10 of 10."""
    client.simulate_post(increase_path(sku), json={"quantity": 10})
    assert client.simulate_post(ship_path(sku), json={"quantity": 10}).status_code == 200
    assert on_hand(sku) == 0


# --- POST: insufficient quantity --------------------------------------------


def test_ship_of_an_unknown_sku_is_400_insufficient_and_emits_nothing(
    client, pending_messages, sku
):
    """Scenario 4."""
    response = client.simulate_post(ship_path(sku), json={"quantity": 40})
    assert_json_error(response, 400, title="Insufficient quantity on hand.")
    assert pending_messages() == []
    assert on_hand(sku) is None


def test_ship_of_more_than_on_hand_is_400_and_leaves_only_the_increase(client, summary, sku):
    """Scenario 5, ship 11 of 10."""
    client.simulate_post(increase_path(sku), json={"quantity": 10})
    response = client.simulate_post(ship_path(sku), json={"quantity": 11})
    assert_json_error(response, 400, title="Insufficient quantity on hand.")
    assert summary() == [(PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": 10})]
    assert on_hand(sku) == 10


# --- POST: invalid bodies ---------------------------------------------------

INVALID_BODIES = {
    "empty": b"",
    "empty-object": b"{}",
    "zero": b'{"quantity": 0}',
    "negative": b'{"quantity": -1}',
    "fraction": b'{"quantity": 1.5}',
    "string": b'{"quantity": "5"}',
    "true": b'{"quantity": true}',
    "null": b'{"quantity": null}',
    "too-big": b'{"quantity": 2147483648}',
    "huge": b'{"quantity": 100000000000000000000000000}',
    "list-body": b"[5]",
    "number-body": b"5",
    "string-body": b'"quantity"',
    "null-body": b"null",
    "extra-field": b'{"quantity": 5, "note": "x"}',
    "wrong-field": b'{"qty": 5}',
    "malformed-json": b'{"quantity": ',
    "nested": b'{"quantity": {"value": 5}}',
}


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
@pytest.mark.parametrize("path", [increase_path, ship_path], ids=["increase", "ship"])
def test_invalid_body_is_a_helpful_400_and_changes_nothing(
    client, pending_messages, sku, path, body
):
    response = client.simulate_post(
        path(sku), body=body, headers={"Content-Type": "application/json"}
    )
    assert_helpful_400(response)
    assert pending_messages() == []
    assert on_hand(sku) is None


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_invalid_ship_body_leaves_the_stock_as_it_was(client, pending_messages, sku, body):
    client.simulate_post(increase_path(sku), json={"quantity": 10})
    before = pending_messages()
    response = client.simulate_post(
        ship_path(sku), body=body, headers={"Content-Type": "application/json"}
    )
    assert_helpful_400(response)
    assert pending_messages() == before
    assert on_hand(sku) == 10


def test_body_without_a_content_type_is_read_as_json(client, sku):
    response = client.simulate_post(increase_path(sku), body=b'{"quantity": 0}')
    assert_helpful_400(response)
    assert on_hand(sku) is None


@pytest.mark.parametrize(
    "bad_sku", ["a" * 65, "a%20b", "caf%C3%A9", "a:b", "%0A", "abc%0A"], ids=repr
)
@pytest.mark.parametrize("path", [increase_path, ship_path], ids=["increase", "ship"])
def test_invalid_sku_in_the_path_is_a_helpful_400_and_changes_nothing(
    client, pending_messages, path, bad_sku
):
    response = client.simulate_post(path(bad_sku), json={"quantity": 5})
    body = assert_helpful_400(response)
    assert body["title"] == "Invalid SKU."
    assert pending_messages() == []
    assert ProductStock.select().count() == 0


# --- errors whatever the client accepts -------------------------------------


@pytest.mark.parametrize(
    "accept",
    [
        "text/html",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ],
    ids=["html", "browser"],
)
def test_errors_are_json_whatever_the_client_accepts(client, sku, accept):
    response = client.simulate_post(
        ship_path(sku), json={"quantity": 40}, headers={"Accept": accept}
    )
    body = assert_json_error(response, 400, title="Insufficient quantity on hand.")
    assert body["description"]
    assert_json_error(client.simulate_get("/nowhere", headers={"Accept": accept}), 404)
