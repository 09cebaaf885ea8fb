"""GET /livez and GET /readyz under Falcon's test client, over a runtime whose
database or broker does not answer (building a runtime connects to nothing,
so it starts). When everything is up, through the running installation: the
processes tier."""

from __future__ import annotations

import json
from collections.abc import Iterator

import falcon.testing
import pytest

from cqrs_warehouse.runtime import build
from cqrs_warehouse.web import create_app
from tests.conftest import settings_for
from tests.support.processes import free_port
from tests.support.services import BROKER_URL


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (free_port closes its socket)."""
    return free_port()


@pytest.fixture
def database_down() -> Iterator[falcon.testing.TestClient]:
    """The API over a PostgreSQL that does not answer, with the tests' RabbitMQ."""
    url = f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere"
    runtime = build(settings_for(url, broker_url=BROKER_URL), embedded=True)
    yield falcon.testing.TestClient(create_app(runtime))
    runtime.database.close()


def assert_not_ready(response, part: str, other: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(response.text)
    assert part in body["title"].lower(), body
    assert other not in body["title"].lower(), body
    assert response.headers.get("Retry-After") == "1"


def test_readyz_answers_503_naming_the_database_when_it_is_unreachable(database_down):
    assert_not_ready(database_down.simulate_get("/readyz"), "database", "broker")


def test_livez_answers_200_while_the_database_is_unreachable(database_down):
    # Liveness is about the process: a database outage must not get it restarted.
    response = database_down.simulate_get("/livez")
    assert response.status_code == 200, response.text
    assert response.json == {"status": "alive"}


def test_readyz_answers_503_naming_the_broker_when_it_is_unreachable(runtime_with):
    broker_url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    client = falcon.testing.TestClient(create_app(runtime_with(broker_url=broker_url)))
    response = client.simulate_get("/readyz")
    assert_not_ready(response, "broker", "database")
    assert response.json["title"] == "Not ready: broker."
    assert response.json["description"] == "The broker did not answer."
    assert client.simulate_get("/livez").status_code == 200


def test_readyz_names_the_part_without_connection_details_which_go_to_the_log(caplog):
    port = closed_port()
    runtime = build(
        settings_for(f"postgresql://warehouse_user@127.0.0.1:{port}/nowhere"), embedded=True
    )
    try:
        response = falcon.testing.TestClient(create_app(runtime)).simulate_get("/readyz")
    finally:
        runtime.database.close()
    assert response.status_code == 503, response.text
    assert response.json == {
        "title": "Not ready: database.",
        "description": "The database did not answer.",
    }
    # The driver's error (host, port, user...) is for the operator, in the log.
    assert str(port) in caplog.text
    assert "the database check failed" in caplog.text


def test_readyz_without_a_broker_url_checks_the_database_only(client):
    # The embedded installation (`cqrs-warehouse serve` without BROKER_URL).
    response = client.simulate_get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json == {"status": "ready", "checks": ["database"]}
