"""Structured logs: JSON lines (the services' stderr is a file here, not a
terminal), a correlation id that follows a request through the outbox to
every listener, the message fields on every line about a message, and no
password from the URLs anywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.processes.conftest import Operated, logs_on_failure, with_passwords
from tests.processes.state import (
    INCREASED,
    NOTIFIED,
    SHIPPED,
    all_output,
    messages,
    one,
    refuse,
    wait,
    wait_for_letter,
    wait_until_view_matches_commands,
)
from tests.support.installation import Installation, project_listeners
from tests.support.processes import BIN, free_port
from tests.support.services import Postgres, unique_name
from tests.support.waiting import wait_for_http

pytestmark = pytest.mark.processes

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: The listeners of the shared installation that receive each kind of event.
RECEIVE_QUANTITY_EVENTS = [
    "products_view",
    "low_product_quantity_notifier",
    "archive",
    "watcher",
    "picky",
    "picky_all",
    "picky_other",
]
RECEIVE_NOTIFIED = ["products_view", "low_product_quantity_notifier", "archive", "watcher"]
#: The loggers of the lines about a message: the listener engine's and the dead letters'.
ENGINE = "cqrs_warehouse.messaging.listening.engine"
ABOUT_MESSAGES = ("cqrs_warehouse.messaging.listening.", "cqrs_warehouse.messaging.dead_letters")


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            lines.append(parsed)
    return lines


def lines_of(installation: Installation, process: str) -> list[dict[str, Any]]:
    """The JSON lines of the installation's ``process`` processes (gunicorn, dramatiq)."""
    return json_lines(
        "\n".join(s.output() for s in installation.services if s.name.split("-")[0] == process)
    )


def worker_lines(ops: Installation) -> list[dict[str, Any]]:
    return lines_of(ops, "dramatiq")


def api_lines(ops: Installation) -> list[dict[str, Any]]:
    return lines_of(ops, "gunicorn")


def published_line(ops: Installation, message_id: str) -> dict[str, Any]:
    found = [
        line
        for line in worker_lines(ops)
        if line.get("logger") == "cqrs_warehouse.messaging.drain"
        and line.get("message") == f"published {message_id}"
    ]
    assert len(found) >= 1, f"no 'published {message_id}' line yet"
    return found[0]


def listener_lines(ops: Installation, message_id: str) -> dict[str, dict[str, Any]]:
    """The engine's line about ``message_id`` of each listener (applied, or held
    when it arrived before its predecessor)."""
    return {
        line["listener"]: line
        for line in worker_lines(ops)
        if line.get("logger") == ENGINE
        and line.get("message_id") == message_id
        and re.fullmatch(r"listener \w+: (applied|held) \(attempt 1\)", line.get("message", ""))
    }


def follow(ops: Installation, message_id: str, message_type: str, listeners: list[str]):
    """The drain's line and each listener's line about ``message_id``, once all are written."""

    def written() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        published = published_line(ops, message_id)
        lines = listener_lines(ops, message_id)
        assert sorted(lines) == sorted(listeners), sorted(lines)
        return published, lines

    published, lines = wait(written)
    assert published["message_id"] == message_id
    assert published["message_type"] == message_type
    for name, line in lines.items():
        assert line["message"].startswith(f"listener {name}: ")
        assert line["message_type"] == message_type
        assert line["listener"] == name
    return published, lines


def test_one_request_id_follows_a_command_through_the_drain_to_every_listener(ops, sku):
    request_id = f"ops-req-{unique_name('id')}"
    response = requests.post(
        f"{ops.base_url}/warehouse/products/{sku}/increase_quantity",
        json={"quantity": 10},
        headers={"X-Request-ID": request_id},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == request_id
    message_id = response.json()["message_id"]

    published, lines = follow(ops, message_id, INCREASED, RECEIVE_QUANTITY_EVENTS)
    assert published["correlation_id"] == request_id
    assert {name: line["correlation_id"] for name, line in lines.items()} == dict.fromkeys(
        RECEIVE_QUANTITY_EVENTS, request_id
    )
    # The API's line about the request carries it too
    request_line = f"POST /warehouse/products/{sku}/increase_quantity 200"
    assert any(
        line.get("correlation_id") == request_id and line["message"].startswith(request_line)
        for line in api_lines(ops)
    )
    # grep <request id> over the logs gives only lines about this request
    for line in [*api_lines(ops), *worker_lines(ops)]:
        if request_id in json.dumps(line):
            assert line["correlation_id"] == request_id, line


def test_the_request_id_follows_to_the_events_a_listeners_command_emits(ops, sku):
    increased = ops.increase(sku, 10)
    assert increased.status_code == 200
    follow(ops, increased.json()["message_id"], INCREASED, RECEIVE_QUANTITY_EVENTS)
    request_id = f"ops-ship-{unique_name('id')}"
    response = requests.post(
        f"{ops.base_url}/warehouse/products/{sku}/ship_quantity",
        json={"quantity": 7},
        headers={"X-Request-ID": request_id},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    follow(ops, response.json()["message_id"], SHIPPED, RECEIVE_QUANTITY_EVENTS)
    # 3 left is at or below the threshold: the notifier's command emits an event
    # whose lines carry the shipment's request id.
    notified = wait(lambda: one(messages(ops, sku, NOTIFIED)))
    published, lines = follow(ops, notified.id, NOTIFIED, RECEIVE_NOTIFIED)
    assert published["correlation_id"] == request_id
    assert {line["correlation_id"] for line in lines.values()} == {request_id}


def test_a_request_without_an_id_gets_a_generated_one_that_follows_it(ops, sku):
    responses = [ops.increase(sku, 10), ops.increase(sku, 10)]
    ids = [response.headers.get("X-Request-ID", "") for response in responses]
    assert all(REQUEST_ID.fullmatch(value) for value in ids), ids
    assert ids[0] != ids[1]
    published, _ = follow(
        ops, responses[0].json()["message_id"], INCREASED, RECEIVE_QUANTITY_EVENTS
    )
    assert published["correlation_id"] == ids[0]


@pytest.mark.parametrize(
    "malformed",
    ["has spaces in it", "x" * 129, "semi;colon", 'quote"d'],
    ids=["spaces", "too-long", "semicolon", "quote"],
)
def test_a_malformed_request_id_is_replaced(ops, sku, malformed):
    response = requests.post(
        f"{ops.base_url}/warehouse/products/{sku}/increase_quantity",
        json={"quantity": 10},
        headers={"X-Request-ID": malformed},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    replaced = response.headers["X-Request-ID"]
    assert replaced != malformed and REQUEST_ID.fullmatch(replaced), replaced
    published, _ = follow(ops, response.json()["message_id"], INCREASED, RECEIVE_QUANTITY_EVENTS)
    assert published["correlation_id"] == replaced
    assert malformed not in all_output(ops)


def test_every_line_about_a_message_names_the_message_its_type_and_the_listener(ops, sku):
    # Including the lines of retries and dead letters
    refuse(ops, "picky", sku)
    assert ops.increase(sku, 10).status_code == 200
    wait_for_letter(ops, "picky", sku)

    def logged() -> list[dict[str, Any]]:
        about_messages = [
            line for line in worker_lines(ops) if line.get("logger", "").startswith(ABOUT_MESSAGES)
        ]
        assert any(line["level"] == "ERROR" and sku in line["message"] for line in about_messages)
        return about_messages

    about_messages = wait(logged)
    for line in about_messages:
        if not line["message_id"] and _BATCH_SUMMARY.match(line["message"]):
            continue  # a batch's INFO line counts several messages' outcomes
        assert line["message_id"] and line["message_type"] and line["listener"], line


_BATCH_SUMMARY = re.compile(r"^listener \w+: \d+ delivered: ")


# Dramatiq's supervising process and its metrics fork log a few lifecycle
# lines (booting, stopping) in dramatiq's own text format; the CLI sets it
# before any of the service's code runs. Every line of the worker processes,
# which handle the messages, is the service's JSON.
_DRAMATIQ_SUPERVISOR = re.compile(
    r"^\[[^]]+\] \[PID \d+\] \[\w+\] \[dramatiq\.(MainProcess|ForkProcess)"
)


def test_every_line_the_api_and_the_workers_write_is_json_when_not_on_a_terminal(ops):
    required = {"time", "level", "logger", "message", "correlation_id"}
    for service in ops.services:
        not_json = []
        for line in service.output().splitlines():
            if not line.strip() or _DRAMATIQ_SUPERVISOR.match(line):
                continue
            try:
                parsed = json.loads(line)
            except ValueError:
                not_json.append(line)
                continue
            assert isinstance(parsed, dict) and required <= set(parsed), line
        assert not not_json, f"{service.name} wrote lines that are not JSON:\n" + "\n".join(
            not_json[:10]
        )


def test_no_password_of_the_urls_appears_in_any_log(operated: Operated, sku):
    ops = operated.installation
    # Some traffic first, so that every part has logged something
    assert ops.increase(sku, 10).status_code == 200
    wait_until_view_matches_commands(ops)
    output = all_output(ops)
    assert output
    db_password, broker_password = operated.secrets
    assert db_password not in output
    assert f":{broker_password}@" not in output


def test_serve_logs_its_urls_with_the_passwords_masked(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path, rabbitmq: None
):
    operated = with_passwords(postgres, tmp_path, name="serve", listeners=project_listeners())
    installation = operated.installation
    port = free_port()
    with logs_on_failure(request, installation):
        service = installation.start(
            "serve", [str(BIN / "cqrs-warehouse"), "serve", "--bind", f"127.0.0.1:{port}"]
        )
        wait_for_http(f"http://127.0.0.1:{port}/readyz", [service])
        service.terminate()
    output = service.output()
    serving = [line for line in json_lines(output) if "serving on" in line.get("message", "")]
    assert serving, output
    assert "postgres:***@" in serving[0]["message"], serving
    assert "guest:***@" in serving[0]["message"], serving
    db_password, _ = operated.secrets
    assert db_password not in output


def test_at_info_the_workers_log_a_line_per_batch_and_none_per_message(scenarios, sku):
    # scenarios runs at the default LOG_LEVEL (INFO)
    message_id = scenarios.increase(sku, 10).json()["message_id"]

    def batch_lines() -> list[dict[str, Any]]:
        assert any(product["sku"] == sku for product in scenarios.products())
        lines = worker_lines(scenarios)
        applied = [
            line
            for line in lines
            if line.get("logger") == ENGINE
            and re.fullmatch(
                r"listener products_view: \d+ delivered: .*applied.* \(attempt 1\)",
                line.get("message", ""),
            )
        ]
        assert applied, "no batch line of products_view yet"
        assert any(re.fullmatch(r"published \d+ messages", line["message"]) for line in lines)
        return lines

    lines = wait(batch_lines)
    assert not [line for line in lines if line.get("message") == f"published {message_id}"]
    assert not listener_lines(scenarios, message_id)
