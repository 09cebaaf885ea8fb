"""The API's /metrics under Falcon's test client: each app counts its own
requests (its HTTP metrics are made with the app, never on a first request).
Across gunicorn workers and in the workers' exposition: the processes tier."""

from __future__ import annotations

import threading

import falcon.testing

from cqrs_warehouse.web import create_app
from tests.support.prometheus import metric


def test_concurrent_first_requests_of_a_fresh_app_all_succeed_and_all_count(runtime):
    # A gunicorn worker once created its HTTP metrics when its first request
    # ended: two requests ending together in a fresh worker both created them
    # (DuplicateTimeseries, a 500 for a command that committed). The metrics
    # are now made with the app; its first requests, together, all count.
    client = falcon.testing.TestClient(create_app(runtime))
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def first_request() -> None:
        barrier.wait()
        statuses.append(client.simulate_get("/livez").status_code)

    threads = [threading.Thread(target=first_request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert statuses == [200] * 8
    text = client.simulate_get("/metrics").text
    assert metric(text, "cqrs_http_requests_total", route="/livez", method="GET") == 8


def test_metrics_count_requests_by_route_template_and_commands_by_outcome(client, sku):
    for _ in range(2):
        assert client.simulate_get(f"/warehouse/products/{sku}").status_code == 200
    assert client.simulate_get("/warehouse/products/bad*sku").status_code == 400
    increase = f"/warehouse/products/{sku}/increase_quantity"
    ship = f"/warehouse/products/{sku}/ship_quantity"
    statuses = [
        client.simulate_post(increase, json={"quantity": 4}).status_code,
        client.simulate_post(ship, json={"quantity": 5}).status_code,  # more than on hand
        client.simulate_post(ship, json={"quantity": 1}).status_code,
    ]
    assert statuses == [200, 400, 200]

    text = client.simulate_get("/metrics").text

    one = "/warehouse/products/{sku}"
    ship_route = "/warehouse/products/{sku}/ship_quantity"
    requests = "cqrs_http_requests_total"
    assert metric(text, requests, route=one, method="GET", status="200") == 2
    assert metric(text, requests, route=one, method="GET", status="400") == 1
    assert metric(text, requests, route=ship_route, method="POST", status="400") == 1
    assert metric(text, requests, route=ship_route, method="POST", status="200") == 1
    assert metric(text, "cqrs_http_request_duration_seconds_count", route=one, method="GET") == 3
    assert sku not in text  # routes are labelled by template, never by the SKU
    commands = "cqrs_commands_total"
    assert metric(text, commands, command="increase_product_quantity", outcome="accepted") == 1
    assert metric(text, commands, command="ship_product_quantity", outcome="accepted") == 1
    assert metric(text, commands, command="ship_product_quantity", outcome="refused") == 1
    # The state read at scrape time: the outbox holds the two accepted commands' events
    assert metric(text, "cqrs_outbox_depth") == 2
    assert metric(text, "cqrs_outbox_oldest_age_seconds") >= 0
