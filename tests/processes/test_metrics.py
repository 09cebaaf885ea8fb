"""Prometheus metrics: the API's /metrics (gunicorn workers added up) and the
workers' exposition server on dramatiq_prom_port.

The shared installation runs nothing but the current test, so counter deltas
around a test's own requests are exact.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import prometheus_client
import pytest
import requests
from prometheus_client import multiprocess

from cqrs_warehouse.messaging.dead_letters import DeadLetter
from tests.processes.state import (
    refuse,
    wait,
    wait_for_letter,
    wait_until_view_matches_commands,
)
from tests.support.installation import Installation
from tests.support.processes import run_to_exit
from tests.support.prometheus import metric, metric_labels
from tests.support.services import unique_name

pytestmark = pytest.mark.processes

SKU_ROUTE = "/warehouse/products/{sku}"
INCREASE_ROUTE = "/warehouse/products/{sku}/increase_quantity"
SHIP_ROUTE = "/warehouse/products/{sku}/ship_quantity"


def requests_of(text: str, route: str, method: str, status: str) -> float:
    return metric(text, "cqrs_http_requests_total", route=route, method=method, status=status)


def listener_names(installation: Installation) -> list[str]:
    return [entry["name"] for entry in installation.listeners]


def test_api_metrics_count_requests_by_route_method_and_status_and_commands_by_outcome(ops, sku):
    before = ops.api_metrics()
    for _ in range(3):
        assert requests.get(f"{ops.base_url}/warehouse/products/{sku}", timeout=10).ok
    assert requests.get(f"{ops.base_url}/warehouse/products/bad*sku", timeout=10).status_code == 400
    assert ops.increase(sku, 4).status_code == 200
    assert ops.ship(sku, 5).status_code == 400  # more than on hand: refused
    assert ops.ship(sku, 1).status_code == 200
    after = ops.api_metrics()

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    requests_total = "cqrs_http_requests_total"
    assert delta(requests_total, route=SKU_ROUTE, method="GET", status="200") == 3
    assert delta(requests_total, route=SKU_ROUTE, method="GET", status="400") == 1
    assert delta(requests_total, route=INCREASE_ROUTE, method="POST", status="200") == 1
    assert delta(requests_total, route=SHIP_ROUTE, method="POST", status="400") == 1
    assert delta(requests_total, route=SHIP_ROUTE, method="POST", status="200") == 1
    # Durations: one observation per request, in a histogram by route and method
    durations = "cqrs_http_request_duration_seconds"
    assert delta(f"{durations}_count", route=SKU_ROUTE, method="GET") == 4
    assert delta(f"{durations}_count", route=SHIP_ROUTE, method="POST") == 2
    assert delta(f"{durations}_bucket", route=SKU_ROUTE, method="GET", le="+Inf") == 4
    assert delta(f"{durations}_sum", route=SKU_ROUTE, method="GET") > 0
    # Routes are labelled by template, never by the SKU in the path
    routes = {labels["route"] for labels in metric_labels(after, requests_total)}
    assert not [route for route in routes if sku in route or "bad" in route], routes
    # Commands by outcome
    commands = "cqrs_commands_total"
    assert delta(commands, command="increase_product_quantity", outcome="accepted") == 1
    assert delta(commands, command="ship_product_quantity", outcome="accepted") == 1
    assert delta(commands, command="ship_product_quantity", outcome="refused") == 1


def test_api_metrics_show_the_outbox_dead_letters_and_each_listeners_lag(ops, sku):
    refuse(ops, "picky", sku)
    assert ops.increase(sku, 8).status_code == 200
    wait_for_letter(ops, "picky", sku)

    def shown() -> str:
        text = ops.api_metrics()
        with ops.reading():
            kept = DeadLetter.select().where(DeadLetter.listener == "picky").count()
        assert metric(text, "cqrs_dead_letters", listener="picky") == kept >= 1
        return text

    text = wait(shown)
    assert metric_labels(text, "cqrs_outbox_depth") == [{}]
    assert metric_labels(text, "cqrs_outbox_oldest_age_seconds") == [{}]
    assert metric(text, "cqrs_outbox_depth") >= 0
    assert metric(text, "cqrs_outbox_oldest_age_seconds") >= 0
    lag = {labels["listener"] for labels in metric_labels(text, "cqrs_listener_lag_messages")}
    assert lag == set(listener_names(ops))


def api_metrics_folder(installation: Installation) -> Path:
    """The Prometheus folder of the running gunicorn (``start_api`` names it
    after the number of processes started before it)."""
    api = installation.current("gunicorn")
    return installation.workdir / f"api-metrics-{installation.services.index(api)}"


def per_process_requests(metrics_dir: Path, route: str, scratch: Path) -> dict[str, float]:
    """GET requests of ``route`` counted by each gunicorn worker, from its own file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        single = scratch / path.stem
        single.mkdir(parents=True)
        shutil.copy(path, single / path.name)
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(single))
        text = prometheus_client.generate_latest(registry).decode()
        counts[path.stem] = metric(text, "cqrs_http_requests_total", route=route, method="GET")
    return counts


def test_the_request_counter_adds_up_across_gunicorn_workers(ops, sku, tmp_path):
    url = f"{ops.base_url}/warehouse/products/{sku}"
    metrics_dir = api_metrics_folder(ops)
    assert metrics_dir.is_dir()

    # Until both gunicorn workers have served this route (fresh connections)
    def both_served() -> None:
        assert requests.get(url, timeout=10, headers={"Connection": "close"}).ok
        counts = per_process_requests(metrics_dir, SKU_ROUTE, tmp_path / unique_name("scan"))
        served = sum(1 for value in counts.values() if value > 0)
        assert served >= 2, f"one gunicorn worker served everything: {counts}"

    wait(both_served)

    before = requests_of(ops.api_metrics(), SKU_ROUTE, "GET", "200")
    sent = 40
    for _ in range(sent):
        assert requests.get(url, timeout=10, headers={"Connection": "close"}).ok
    text = ops.api_metrics()
    assert requests_of(text, SKU_ROUTE, "GET", "200") - before == sent
    # /metrics is the sum of what every worker counted
    counts = per_process_requests(metrics_dir, SKU_ROUTE, tmp_path / unique_name("scan"))
    assert sum(counts.values()) == metric(
        text, "cqrs_http_requests_total", route=SKU_ROUTE, method="GET"
    )


def test_the_workers_exposition_counts_listener_outcomes(ops, sku):
    before = ops.worker_metrics()
    skus = [f"{sku}-{n}" for n in range(3)]
    for each in skus:
        assert ops.increase(each, 10).status_code == 200
    refused = f"{sku}-refused"
    refuse(ops, "picky", refused)
    assert ops.increase(refused, 10).status_code == 200
    wait_for_letter(ops, "picky", refused)

    def counted() -> str:
        text = ops.worker_metrics()

        def delta(**labels: str) -> float:
            return metric(text, "cqrs_listener_messages_total", **labels) - metric(
                before, "cqrs_listener_messages_total", **labels
            )

        assert delta(listener="products_view", outcome="applied") == 4
        assert delta(listener="archive", outcome="applied") == 4
        assert delta(listener="picky", outcome="applied") == 3
        assert delta(listener="picky", outcome="retried") == 1
        assert delta(listener="picky", outcome="dead_lettered") == 1
        return text

    text = wait(counted)
    assert (
        metric(text, "cqrs_outbox_published_total") - metric(before, "cqrs_outbox_published_total")
        >= 4
    )
    actor = {"actor_name": "listener.products_view"}
    assert (
        metric(text, "dramatiq_messages_total", **actor)
        - metric(before, "dramatiq_messages_total", **actor)
        == 4
    )


PUBLISH_NOW = """
from cqrs_warehouse.runtime import build

runtime = build()
with runtime.database.connection_context():
    print(runtime.actors.drain.run())
"""


def publish_outbox(installation: Installation) -> int:
    """Drain the outbox to RabbitMQ from a process of its own, as a worker would."""
    finished = run_to_exit(
        [sys.executable, "-c", PUBLISH_NOW], env=installation.env, cwd=installation.workdir
    )
    assert finished.returncode == 0, finished.output
    return int(finished.stdout.strip())


def test_listener_lag_rises_while_the_workers_are_stopped(spare, sku):
    wait_until_view_matches_commands(spare)  # nothing left over
    assert spare.current("dramatiq").terminate() == 0  # stopped by itself, in time
    try:
        sent = 6
        for n in range(sent):
            assert spare.increase(f"{sku}-{n}", 10).status_code == 200
        # The drain runs in the workers: with them stopped, what rises first is
        # the outbox, not the queues.
        text = spare.api_metrics()
        assert metric(text, "cqrs_outbox_depth") == sent
        assert metric(text, "cqrs_outbox_oldest_age_seconds") > 0
        assert metric(text, "cqrs_listener_lag_messages", listener="products_view") == 0
        # Once something publishes them, they wait in every listener's queue
        assert publish_outbox(spare) == sent

        def lagging() -> None:
            text = spare.api_metrics()
            assert metric(text, "cqrs_outbox_depth") == 0
            for listener in ("products_view", "archive", "watcher"):
                assert metric(text, "cqrs_listener_lag_messages", listener=listener) == sent

        wait(lagging)
    finally:
        spare.start_workers()

    def caught_up() -> None:
        text = spare.api_metrics()
        for listener in listener_names(spare):
            assert metric(text, "cqrs_listener_lag_messages", listener=listener) == 0

    wait(caught_up)
    state = wait_until_view_matches_commands(spare)
    assert all(state[f"{sku}-{n}"] == 10 for n in range(6))


def test_the_workers_count_each_delivery_of_a_batch_as_a_dramatiq_message(spare, sku):
    wait_until_view_matches_commands(spare)  # nothing left over
    before = spare.worker_metrics()
    assert spare.current("dramatiq").terminate() == 0  # stopped by itself, in time
    sent = 30
    try:
        for n in range(sent):
            assert spare.increase(f"{sku}-{n}", 10).status_code == 200
        # Waiting in the queue when the workers start, they reach the
        # listener's consumer together: it applies them in batches.
        assert publish_outbox(spare) == sent
    finally:
        spare.start_workers()
    actor = {"actor_name": "listener.products_view"}

    def delta(text: str, name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    def applied() -> str:
        text = spare.worker_metrics()
        labels = {"listener": "products_view", "outcome": "applied"}
        assert delta(text, "cqrs_listener_messages_total", **labels) == sent
        return text

    text = wait(applied)
    # Fewer Dramatiq messages were processed (timed) than deliveries applied...
    assert delta(text, "dramatiq_message_duration_milliseconds_count", **actor) < sent
    # ...yet Dramatiq's counter counts each delivery, as RabbitMQ does.
    assert delta(text, "dramatiq_messages_total", **actor) == sent
    assert delta(text, "dramatiq_message_errors_total", **actor) == 0
    state = wait_until_view_matches_commands(spare)
    assert all(state[f"{sku}-{n}"] == 10 for n in range(sent))
