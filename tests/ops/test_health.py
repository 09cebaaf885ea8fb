"""GET /livez and GET /readyz: through the running installation when
everything is up, and in-process over a runtime bootstrapped on a closed
port (bootstrap connects to nothing, so it starts) when a part is down."""

from __future__ import annotations

import json
from collections.abc import Iterator

import falcon.testing
import pytest
import requests

from cqrs_warehouse.bootstrap import bootstrap
from cqrs_warehouse.settings import Settings
from cqrs_warehouse.web import app_for
from tests.conftest import BROKER_URL, ROOT, SCHEMAS, PostgresDatabases, unique_name
from tests.ops.support import closed_port, process_globals_restored


def settings(database_url: str, broker_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        broker_url=broker_url,
        listeners_config=str(ROOT / "config" / "listeners.yaml"),
        schemas_dir=str(SCHEMAS),
        queue_prefix=unique_name("health") + ".",
    )


@pytest.fixture
def client_for() -> Iterator:
    """A test client of ``app_for(bootstrap(settings))``; the process's globals
    are put back afterwards."""
    with process_globals_restored():

        def build(chosen: Settings) -> falcon.testing.TestClient:
            return falcon.testing.TestClient(app_for(bootstrap(chosen)))

        yield build


def assert_not_ready(response, part: str, other: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(response.text)
    assert part in body["title"].lower(), body
    assert other not in body["title"].lower(), body
    assert response.headers.get("Retry-After") == "1"


def test_livez_answers_200_while_the_process_is_up(ops):
    response = requests.get(ops.base_url + "/livez", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readyz_answers_200_when_the_database_and_the_broker_answer(ops):
    response = requests.get(ops.base_url + "/readyz", timeout=10)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": ["broker", "database"]}


def test_readyz_answers_503_naming_the_database_when_it_is_unreachable(client_for):
    client = client_for(
        settings(f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere", BROKER_URL)
    )
    assert_not_ready(client.simulate_get("/readyz"), "database", "broker")


def test_livez_answers_200_while_the_database_is_unreachable(client_for):
    # Liveness is about the process: a database outage must not get it restarted.
    client = client_for(
        settings(f"postgresql://postgres@127.0.0.1:{closed_port()}/nowhere", BROKER_URL)
    )
    response = client.simulate_get("/livez")
    assert response.status_code == 200, response.text
    assert response.json == {"status": "alive"}


def test_readyz_answers_503_naming_the_broker_when_it_is_unreachable(
    client_for, postgres_databases: PostgresDatabases
):
    broker_url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    client = client_for(settings(postgres_databases.create(), broker_url))
    response = client.simulate_get("/readyz")
    assert_not_ready(response, "broker", "database")
    assert response.json["title"] == "Not ready: broker."
    assert response.json["description"].startswith("broker: ")
    assert client.simulate_get("/livez").status_code == 200
