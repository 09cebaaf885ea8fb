"""Idempotency-Key across API processes: two gunicorn servers on one
PostgreSQL database. Concurrent requests with one key, spread over both,
apply the command once; a retry on the other server gets the first answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from cqrs_warehouse.messaging.storage.models import IdempotencyKey, OutboxRecord
from cqrs_warehouse.warehouse.commands import ProductStock
from tests.processes.conftest import logs_on_failure
from tests.support.installation import GUNICORN_CONF, Installation, project_listeners
from tests.support.processes import BIN, free_port
from tests.support.services import Postgres, unique_name
from tests.support.waiting import wait_for_http

pytestmark = pytest.mark.processes

CONCURRENT = 12


@pytest.fixture(scope="module")
def two_apis(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[tuple[Installation, list[str]]]:
    """An installation (no workers: events stay in the outbox) served by two
    gunicorn servers of one worker each; their base URLs."""
    installation = Installation.create(
        postgres, tmp_path_factory.mktemp("idem"), name="idem", listeners=project_listeners()
    )
    with logs_on_failure(request, installation):
        installation.start_api(workers=1)
        port = free_port()
        metrics = installation.workdir / "api-metrics-second"
        metrics.mkdir()
        second = installation.start(
            "gunicorn",
            [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}"],
            {"WEB_CONCURRENCY": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
        )
        other = f"http://127.0.0.1:{port}"
        wait_for_http(other + "/readyz", [second])
        yield installation, [installation.base_url, other]


def post(base_url: str, path: str, quantity: int, key: str) -> requests.Response:
    return requests.post(
        base_url + path, json={"quantity": quantity}, headers={"Idempotency-Key": key}, timeout=30
    )


def state(installation: Installation, sku: str, key: str) -> tuple[int | None, int, int]:
    """(on hand, outbox rows of the SKU, rows of the key)."""
    with installation.reading():
        row = ProductStock.get_or_none(ProductStock.sku == sku)
        events = OutboxRecord.select().where(OutboxRecord.stream == sku).count()
        keys = IdempotencyKey.select().where(IdempotencyKey.key == key).count()
    return (None if row is None else row.quantity), events, keys


def test_concurrent_requests_with_one_key_on_two_servers_apply_it_once(two_apis):
    installation, urls = two_apis
    sku, key = unique_name("sku"), unique_name("key")
    path = f"/warehouse/products/{sku}/increase_quantity"
    start = threading.Barrier(CONCURRENT)

    def send(index: int) -> requests.Response:
        start.wait(timeout=30)
        return post(urls[index % 2], path, 9, key)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(send, range(CONCURRENT)))
    originals = [
        a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a.headers
    ]
    assert len(originals) == 1, [(a.status_code, a.text) for a in answers]
    (first,) = originals
    for answer in answers:
        if answer is first:
            continue
        if answer.status_code == 409:  # allowed: the first outlasted the bounded wait
            assert answer.headers["Retry-After"] == "1"
            continue
        assert answer.headers["Idempotent-Replayed"] == "true"
        assert (answer.status_code, answer.content) == (200, first.content)
        assert answer.headers["X-Consistency-Token"] == first.headers["X-Consistency-Token"]
    assert state(installation, sku, key) == (9, 1, 1)


def test_a_refusal_on_one_server_is_replayed_by_the_other(two_apis):
    installation, (one, other) = two_apis
    sku, key = unique_name("sku"), unique_name("key")
    ship = f"/warehouse/products/{sku}/ship_quantity"
    refused = post(one, ship, 4, key)
    assert refused.status_code == 400
    assert refused.json()["title"] == "Insufficient quantity on hand."
    assert post(other, f"/warehouse/products/{sku}/increase_quantity", 10, unique_name("k")).ok
    again = post(other, ship, 4, key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert (again.status_code, again.content) == (400, refused.content)
    reused = post(other, ship, 5, key)
    assert reused.status_code == 422
    assert state(installation, sku, key) == (10, 1, 1)
