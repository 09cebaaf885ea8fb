"""Idempotency-Key on command POSTs (web/idempotency.py), under Falcon's test
client on SQLite and PostgreSQL: a retry gets the first answer and applies
nothing again; another request under the key is a 422; a malformed key a
400; a 5xx is not remembered; keys expire and expired rows go. (A COMMIT
that fails: test_commit_outcome.py; across API processes:
tests/processes/test_idempotency.py.)"""

from __future__ import annotations

import datetime
import threading

import falcon.testing
import pytest

from cqrs_warehouse.messaging.errors import DatabaseUnavailableError
from cqrs_warehouse.messaging.storage.models import IdempotencyKey, utcnow
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.events import PRODUCT_QUANTITY_INCREASED
from cqrs_warehouse.web import create_app, idempotency
from tests.slices.returns.returns import PRODUCT_RETURNED, ReturnCount
from tests.support.services import unique_name
from tests.support.waiting import eventually


def increase_path(sku: str) -> str:
    return f"/warehouse/products/{sku}/increase_quantity"


def ship_path(sku: str) -> str:
    return f"/warehouse/products/{sku}/ship_quantity"


@pytest.fixture
def key() -> str:
    return unique_name("key")


def post(client, path, quantity, key, **headers):
    return client.simulate_post(
        path, json={"quantity": quantity}, headers={"Idempotency-Key": key, **headers}
    )


def on_hand(sku):
    row = ProductStock.get_or_none(ProductStock.sku == sku)
    return None if row is None else row.quantity


def events_of(runtime, sku):
    return [(m.type, m.payload) for m in runtime.outbox.pending() if m.payload["sku"] == sku]


def assert_replay_of(first, again):
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers.get("X-Consistency-Token") == first.headers.get("X-Consistency-Token")


# --- a retry gets the first answer ------------------------------------------------


def test_a_retry_gets_the_first_answer_and_applies_nothing_again(runtime, client, sku, key):
    first = post(client, increase_path(sku), 7, key)
    assert first.status_code == 200, first.text
    assert first.headers["X-Consistency-Token"]
    # The same JSON written otherwise is the same request (canonical form).
    again = client.simulate_post(
        increase_path(sku),
        body=b'{ "quantity" :7 }',
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert_replay_of(first, again)
    assert on_hand(sku) == 7
    assert events_of(runtime, sku) == [(PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": 7})]


def test_a_refused_command_is_remembered_and_its_retry_gets_the_same_refusal(
    runtime, client, sku, key
):
    refused = post(client, ship_path(sku), 5, key)
    assert refused.status_code == 400
    assert refused.json["title"] == "Insufficient quantity on hand."
    client.simulate_post(increase_path(sku), json={"quantity": 10})  # now there would be enough
    again = post(client, ship_path(sku), 5, key)
    assert_replay_of(refused, again)
    assert on_hand(sku) == 10
    assert events_of(runtime, sku) == [(PRODUCT_QUANTITY_INCREASED, {"sku": sku, "quantity": 10})]


def test_the_returns_slice_post_gets_it_without_a_line_of_its_own(runtime, client, sku, key):
    first = post(client, f"/returns/{sku}", 2, key)
    assert first.status_code == 200, first.text
    again = post(client, f"/returns/{sku}", 2, key)
    assert_replay_of(first, again)
    assert ReturnCount.get(ReturnCount.sku == sku).version == 1
    returned = [m for m in runtime.outbox.pending() if m.type == PRODUCT_RETURNED]
    assert [m.payload for m in returned if m.payload["sku"] == sku] == [{"sku": sku, "quantity": 2}]


def test_the_quoted_form_of_a_key_is_the_same_key(client, sku, key):
    first = post(client, increase_path(sku), 1, key)
    again = post(client, increase_path(sku), 1, f'"{key}"')
    assert_replay_of(first, again)
    assert on_hand(sku) == 1


def test_the_drain_is_woken_once_the_outer_transaction_has_committed(runtime, sku, key):
    woken: list[bool] = []
    runtime.outbox.wake_drain = lambda: woken.append(runtime.database.in_transaction())
    client = falcon.testing.TestClient(create_app(runtime))
    post(client, increase_path(sku), 1, key)
    assert woken == [False]  # once, after the commit
    post(client, increase_path(sku), 1, key)
    assert woken == [False]  # a replay appends nothing


def test_a_request_without_the_header_runs_every_time(client, sku):
    for _ in range(2):
        assert client.simulate_post(increase_path(sku), json={"quantity": 1}).status_code == 200
    assert on_hand(sku) == 2


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        lambda sku: (increase_path(sku), 8),  # another body
        lambda sku: (ship_path(sku), 7),  # another path
        lambda sku: (increase_path(sku + "x"), 7),  # another SKU
    ],
    ids=["body", "command", "sku"],
)
def test_the_same_key_with_another_request_is_a_422_that_changes_nothing(
    runtime, client, sku, key, other
):
    post(client, increase_path(sku), 7, key)
    path, quantity = other(sku)
    refused = post(client, path, quantity, key)
    assert refused.status_code == 422
    assert refused.json["title"] == "Idempotency-Key reused."
    assert key in refused.json["description"]
    assert on_hand(sku) == 7
    assert on_hand(sku + "x") is None
    assert len(events_of(runtime, sku)) == 1


@pytest.mark.parametrize(
    "malformed",
    ["", "a b", "é", "k" * 256, "tab\tinside", '"a b"', "\x7f", '""', '"a\\"b"', '"abc'],
    ids=[
        "empty",
        "space",
        "non-ascii",
        "too-long",
        "tab",
        "quoted-space",
        "del",
        "quoted-empty",
        "quoted-escape",
        "unclosed-quote",
    ],
)
def test_a_malformed_key_is_a_400_that_changes_nothing(runtime, client, sku, malformed):
    response = client.simulate_post(
        increase_path(sku),
        json={"quantity": 1},
        headers={"Idempotency-Key": malformed},
    )
    assert response.status_code == 400
    assert response.json["title"] == "Invalid Idempotency-Key."
    assert on_hand(sku) is None
    assert IdempotencyKey.select().count() == 0


@pytest.mark.parametrize("accepted", ["k" * 255, '"' + "k" * 255 + '"', 'a"b\\c', "!~"])
def test_keys_of_1_to_255_visible_characters_are_accepted(client, sku, accepted):
    response = post(client, increase_path(sku), 1, accepted)
    assert response.status_code == 200, response.text


def test_the_quoted_form_names_what_is_inside():
    assert idempotency.parse_key('"abc"') == idempotency.parse_key("abc") == "abc"
    assert idempotency.parse_key(" abc ") == "abc"


# --- a 5xx is not remembered -------------------------------------------------------


def test_a_5xx_undoes_the_command_and_is_not_remembered(runtime, monkeypatch, sku, key):
    commands = runtime.services["warehouse"].commands
    real = type(commands).increase_product_quantity
    failures = [DatabaseUnavailableError("injected after the command ran")]

    def then_fail(self, sku, quantity):
        message = real(self, sku, quantity)  # its savepoint is released...
        if failures:
            raise failures.pop()
        return message

    monkeypatch.setattr(type(commands), "increase_product_quantity", then_fail)
    client = falcon.testing.TestClient(create_app(runtime))
    failed = post(client, increase_path(sku), 3, key)
    assert failed.status_code == 503
    assert on_hand(sku) is None  # ...and undone with the request's transaction
    assert events_of(runtime, sku) == []
    again = post(client, increase_path(sku), 3, key)
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    assert on_hand(sku) == 3
    assert len(events_of(runtime, sku)) == 1


# --- expiry ------------------------------------------------------------------------


def expire(key):
    past = utcnow() - datetime.timedelta(seconds=1)
    IdempotencyKey.update(expires_at=past).where(IdempotencyKey.key == key).execute()


def test_a_key_expires_after_the_ttl(runtime_with, sku, key):
    runtime = runtime_with(idempotency_key_ttl=600)
    client = falcon.testing.TestClient(create_app(runtime))
    before = utcnow()
    post(client, increase_path(sku), 1, key)
    after = utcnow()
    expires_at = IdempotencyKey.get(IdempotencyKey.key == key).expires_at
    ttl = datetime.timedelta(seconds=600)
    assert before + ttl <= expires_at <= after + ttl
    expire(key)
    again = post(client, increase_path(sku), 2, key)  # new again, even with another body
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    assert on_hand(sku) == 3
    assert IdempotencyKey.get(IdempotencyKey.key == key).expires_at > utcnow()


def test_expired_rows_are_deleted_by_later_claims(client, sku):
    expired = [unique_name("old") for _ in range(idempotency.CLEANUP_BATCH + 5)]
    past = utcnow() - datetime.timedelta(days=2)
    IdempotencyKey.insert_many(
        [{"key": k, "request": "x", "status": 200, "expires_at": past} for k in expired]
    ).execute()
    post(client, increase_path(sku), 1, unique_name("key"))
    assert IdempotencyKey.select().where(IdempotencyKey.key.in_(expired)).count() == 5
    post(client, increase_path(sku), 1, unique_name("key"))
    assert IdempotencyKey.select().where(IdempotencyKey.key.in_(expired)).count() == 0
    assert IdempotencyKey.select().count() == 2  # the two live keys


# --- concurrency (PostgreSQL: a claim waits for the transaction that holds the key) --


def waiting_backends(postgres, database_name):
    admin = postgres.connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND wait_event_type = 'Lock'",
                (database_name,),
            )
            return cursor.fetchone()[0]
    finally:
        admin.close()


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_concurrent_retry_waits_for_the_first_and_gets_its_answer(runtime, postgres, sku, key):
    database_name = runtime.settings.database_url.rsplit("/", 1)[1]
    client = falcon.testing.TestClient(create_app(runtime))
    client.simulate_post(increase_path(sku), json={"quantity": 10})
    # Hold the SKU's row: the first request claims the key, then waits on it.
    holder = postgres.connect(database_name)
    holder.autocommit = False
    with holder.cursor() as cursor:
        cursor.execute(
            'SELECT 1 FROM "warehouse"."warehouse_product_stock" WHERE sku = %s FOR UPDATE',
            (sku,),
        )
    answers: list = [None, None]

    def send(index):
        answers[index] = post(client, ship_path(sku), 4, key)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        eventually(lambda: _assert_equal(waiting_backends(postgres, database_name), 2))
    finally:
        holder.rollback()
        holder.close()
    for thread in threads:
        thread.join(timeout=30)
    first, second = sorted(answers, key=lambda a: "Idempotent-Replayed" in a.headers)
    assert first.status_code == 200, first.text
    assert_replay_of(first, second)
    assert on_hand(sku) == 6  # shipped once
    assert len(events_of(runtime, sku)) == 2  # Increased, Shipped


def _assert_equal(value, expected):
    assert value == expected


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_key_held_longer_than_the_wait_is_a_409_with_retry_after(
    runtime, postgres, monkeypatch, sku, key
):
    monkeypatch.setattr(idempotency, "CLAIM_WAIT", "200ms")
    client = falcon.testing.TestClient(create_app(runtime))
    holder = postgres.connect(runtime.settings.database_url.rsplit("/", 1)[1])
    holder.autocommit = False
    try:
        with holder.cursor() as cursor:  # a request in progress with the key
            cursor.execute(
                'INSERT INTO "messaging"."messaging_idempotency_keys" (key, request, expires_at) '
                "VALUES (%s, 'x', now() + interval '1 day')",
                (key,),
            )
        response = post(client, increase_path(sku), 1, key)
    finally:
        holder.rollback()
        holder.close()
    assert response.status_code == 409
    assert response.headers["Retry-After"] == "1"
    assert response.json["title"] == "Request in progress."
    assert on_hand(sku) is None
    again = post(client, increase_path(sku), 1, key)  # the holder gave up: the key is free
    assert again.status_code == 200
    assert on_hand(sku) == 1
