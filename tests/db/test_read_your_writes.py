"""Read-your-writes: a command's consistency token makes a view read wait
until the products view has applied that command's event."""

from __future__ import annotations

import threading
import time

import falcon.testing
import pytest

from cqrs_warehouse.messaging import consistency
from cqrs_warehouse.messaging.consistency import ConsistencyGate, decode_token, encode_token
from cqrs_warehouse.messaging.testing import clear_outbox, feed, pending_messages
from cqrs_warehouse.settings import Settings
from cqrs_warehouse.warehouse.views.products import handle_message
from cqrs_warehouse.web import build_app


def client(timeout: float = 5.0) -> falcon.testing.TestClient:
    gate = ConsistencyGate(listener=handle_message.__module__ + ":handle_message", timeout=timeout)
    return falcon.testing.TestClient(build_app(Settings(), gate=gate))


def apply_when_someone_waits(messages, *, deadline: float = 5.0) -> threading.Thread:
    """Feed ``messages`` to the view once a reader is waiting (never before)."""

    def run() -> None:
        stop = time.monotonic() + deadline
        while not consistency._local._waiting and time.monotonic() < stop:
            time.sleep(0.001)
        for message in messages:
            feed(handle_message, message)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_token_encodes_the_stream_position_of_the_commands_event():
    assert decode_token(encode_token("abc-1.2", 7)) == ("abc-1.2", 7)


@pytest.mark.parametrize("token", ["", "not-a-token", encode_token("x", 1)[:-2] + "!!", "WzEsMl0"])
def test_an_invalid_token_is_a_400(db, token):
    response = client().simulate_get("/warehouse/products", params={"after": token or "%"})
    assert response.status_code == 400
    assert response.json["title"] == "Invalid consistency token."


def test_a_command_returns_its_token_in_the_body_and_the_header(db, sku):
    response = client().simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 3}
    )
    assert response.status_code == 200
    token = response.json["consistency_token"]
    assert response.headers["X-Consistency-Token"] == token
    assert decode_token(token) == (sku, 1)


@pytest.mark.parametrize("how", ["query", "header"])
def test_a_read_with_the_token_waits_until_the_view_applied_the_write(db, sku, how):
    api = client()
    token = api.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    [event] = pending_messages()
    clear_outbox()
    feeder = apply_when_someone_waits([event])
    if how == "query":
        response = api.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    else:
        response = api.simulate_get(
            f"/warehouse/products/{sku}", headers={"X-Consistency-Token": token}
        )
    feeder.join()
    assert response.status_code == 200
    assert response.json == {"sku": sku, "quantity": 5}


def test_the_list_read_with_a_token_sees_the_write(db, sku):
    api = client()
    api.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 2})
    token = api.simulate_post(
        f"/warehouse/products/{sku}/ship_quantity", json={"quantity": 1}
    ).json["consistency_token"]
    events = pending_messages()
    feeder = apply_when_someone_waits(events)
    response = api.simulate_get("/warehouse/products", params={"after": token})
    feeder.join()
    assert response.json == [{"sku": sku, "quantity": 1}]


def test_a_read_whose_write_is_not_applied_in_time_is_a_503_with_retry_after(db, sku):
    api = client(timeout=0.2)
    token = api.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    response = api.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json["title"] == "Not consistent yet."


def test_a_read_without_a_token_answers_at_once_eventually_consistent(db, sku):
    api = client(timeout=30)
    api.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5})
    assert api.simulate_get(f"/warehouse/products/{sku}").json == {"sku": sku, "quantity": 0}
    assert api.simulate_get("/warehouse/products").json == []
