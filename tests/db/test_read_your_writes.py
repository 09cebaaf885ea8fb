"""Read-your-writes: a command's consistency token makes a view read wait
until the products view has applied that command's event. The API under
Falcon's test client; the view fed through the runtime's engine."""

from __future__ import annotations

import base64
import json
import threading

import falcon.testing
import pytest

from cqrs_warehouse.messaging.consistency import decode_token, encode_token
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.messaging.testing import eventually, feed
from cqrs_warehouse.web import create_app


@pytest.fixture
def api(runtime, runtime_with):
    """``api(timeout=None)``: (the runtime, a test client of its API); a runtime
    of its own when CONSISTENCY_TIMEOUT differs from the default."""

    def make(timeout: float | None = None):
        chosen = runtime if timeout is None else runtime_with(consistency_timeout=timeout)
        return chosen, falcon.testing.TestClient(create_app(chosen))

    return make


def apply_when_someone_waits(runtime, messages, *, deadline: float = 5.0) -> threading.Thread:
    """Feed ``messages`` to the products view once a reader is waiting (never before)."""
    view = runtime.routing.listener("products_view")

    def run() -> None:
        try:
            eventually(lambda: _assert_waiting(runtime), timeout=deadline, interval=0.001)
            for message in messages:
                feed(runtime.engine, view, message)
        finally:
            runtime.database.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _assert_waiting(runtime) -> None:
    assert runtime.consistency.waiting() > 0, "no reader waits yet"


def test_a_token_encodes_the_stream_position_of_the_commands_event():
    assert decode_token(encode_token("abc-1.2", 7)) == ("abc-1.2", 7)


def bogus_tokens(sku: str) -> list[str]:
    def b64(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return [
        "%",
        "%%%",
        "not-a-token",
        encode_token("x", 1)[:-2] + "!!",
        "WzEsMl0",  # [1, 2]
        b64({"sku": sku}),
        b64([sku, 0]),
        b64([sku, "1"]),
        b64([7, 1]),
        encode_token(sku, 1)[:-3],
    ]


@pytest.mark.parametrize("as_header", [False, True], ids=["query", "header"])
@pytest.mark.parametrize("path", ["/warehouse/products", "/warehouse/products/{sku}"])
def test_an_invalid_token_is_a_400(api, sku, as_header, path):
    _, client = api()
    for token in bogus_tokens(sku):
        if as_header:
            response = client.simulate_get(
                path.format(sku=sku), headers={"X-Consistency-Token": token}
            )
        else:
            response = client.simulate_get(path.format(sku=sku), params={"after": token})
        assert response.status_code == 400, (token, response.text)
        assert response.json["title"] == "Invalid consistency token."


def test_a_command_returns_its_token_in_the_body_and_the_header(api, sku):
    _, client = api()
    response = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 3}
    )
    assert response.status_code == 200
    token = response.json["consistency_token"]
    assert response.headers["X-Consistency-Token"] == token
    assert decode_token(token) == (sku, 1)


@pytest.mark.parametrize("how", ["query", "header"])
def test_a_read_with_the_token_waits_until_the_view_applied_the_write(api, sku, how):
    runtime, client = api()
    token = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    [event] = runtime.outbox.pending()
    OutboxRecord.delete().execute()
    feeder = apply_when_someone_waits(runtime, [event])
    if how == "query":
        response = client.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    else:
        response = client.simulate_get(
            f"/warehouse/products/{sku}", headers={"X-Consistency-Token": token}
        )
    feeder.join()
    assert response.status_code == 200
    assert response.json == {"sku": sku, "quantity": 5}
    assert runtime.consistency.waiting() == 0  # the reader is gone


def test_the_list_read_with_a_token_sees_the_write(api, sku):
    runtime, client = api()
    client.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 2})
    token = client.simulate_post(
        f"/warehouse/products/{sku}/ship_quantity", json={"quantity": 1}
    ).json["consistency_token"]
    events = runtime.outbox.pending()
    feeder = apply_when_someone_waits(runtime, events)
    response = client.simulate_get("/warehouse/products", params={"after": token})
    feeder.join()
    assert response.json == [{"sku": sku, "quantity": 1}]


def test_a_read_whose_write_is_not_applied_in_time_is_a_503_with_retry_after(api, sku):
    runtime, client = api(timeout=0.2)
    token = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    response = client.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.json["title"] == "Not consistent yet."
    assert runtime.consistency.waiting() == 0


def test_a_read_without_a_token_answers_at_once_eventually_consistent(api, sku):
    _, client = api(timeout=30)
    client.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5})
    assert client.simulate_get(f"/warehouse/products/{sku}").json == {"sku": sku, "quantity": 0}
    assert client.simulate_get("/warehouse/products").json == []


@pytest.mark.parametrize("path", ["/warehouse/products", "/warehouse/products/{sku}"])
def test_a_token_beyond_what_the_commands_issued_is_a_400_at_once(api, sku, path):
    runtime, client = api(timeout=120)  # were it waited for, the test would take minutes
    client.simulate_post(f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5})
    for token in (encode_token(sku, 2), encode_token(sku, 2**40), encode_token(f"{sku}-x", 1)):
        response = client.simulate_get(path.format(sku=sku), params={"after": token})
        assert response.status_code == 400, response.text
        assert response.json["title"] == "Invalid consistency token."
        assert "not issued by this service" in response.json["description"]
    assert runtime.consistency.waiting() == 0


def test_a_token_already_applied_answers_without_waiting_even_at_the_cap(
    runtime_with, runtime, sku
):
    capped = runtime_with(consistency_max_waiting=0, consistency_timeout=120)
    client = falcon.testing.TestClient(create_app(capped))
    token = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    for event in capped.outbox.pending():
        feed(capped.engine, capped.routing.listener("products_view"), event)
    response = client.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    assert response.status_code == 200
    assert response.json == {"sku": sku, "quantity": 5}


def test_reads_beyond_the_cap_are_a_503_with_retry_after_at_once(runtime_with, sku):
    capped = runtime_with(consistency_max_waiting=1, consistency_timeout=120)
    client = falcon.testing.TestClient(create_app(capped))
    token = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}
    ).json["consistency_token"]
    [event] = capped.outbox.pending()
    OutboxRecord.delete().execute()
    answers = []

    def first_reader() -> None:
        try:
            answers.append(
                client.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
            )
        finally:
            capped.database.close()

    waiting = threading.Thread(target=first_reader)
    waiting.start()
    eventually(lambda: _assert_waiting(capped), timeout=10, interval=0.001)
    refused = client.simulate_get(f"/warehouse/products/{sku}", params={"after": token})
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert refused.json["title"] == "Too many waiting reads."
    assert capped.consistency.waiting() == 1  # the first still waits
    feed(capped.engine, capped.routing.listener("products_view"), event)
    waiting.join(timeout=30)
    assert [a.status_code for a in answers] == [200]
    assert capped.consistency.waiting() == 0
