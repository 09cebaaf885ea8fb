"""The processes tier: the service's real processes (gunicorn, dramatiq, the
CLI) on PostgreSQL and RabbitMQ, each installation a
``tests.support.installation.Installation``. Fails, never skips, when
RabbitMQ or PostgreSQL does not answer.

Shared installations (tests stay apart with SKUs of their own):

- ``scenarios``: the project's listeners, the watcher and a user's own
  listener (the shipment recorder), for the reference scenarios;
- ``operated``: the project's listeners, the watcher and the picky
  listeners that fail on demand, with a password in its database URL, for
  operating it (CLI, health, metrics, logs, read-your-writes);
- ``spare``: the same, for the tests that stop and restart its processes
  (shutdown, lag), with CONSISTENCY_TIMEOUT=3.

Each prints its processes' logs when a test using it failed.
"""

from __future__ import annotations

import contextlib
import sys
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.installation import (
    SHIPMENT_RECORDER,
    WATCHER,
    Installation,
    project_listeners,
)
from tests.support.services import (
    BROKER_URL,
    Postgres,
    unique_name,
)

PICKY_BINDINGS = [
    "Warehouse.Events.ProductQuantityIncreased.*",
    "Warehouse.Events.ProductQuantityShipped.*",
]
PICKY_RETRY = {"max_attempts": 2, "min_delay": 0.1, "max_delay": 0.2}


def picky_listener(name: str, *, max_attempts: int = 2) -> dict[str, Any]:
    """A listener of the recorders slice that fails for the SKUs refused to it."""
    return {
        "name": name,
        "handler": f"tests.slices.recorders.listeners:{name}",
        "bindings": list(PICKY_BINDINGS),
        "retry": {**PICKY_RETRY, "max_attempts": max_attempts},
    }


def operated_listeners() -> list[dict[str, Any]]:
    """The project's listeners, the watcher and the three picky listeners."""
    return [
        *project_listeners(),
        WATCHER,
        picky_listener("picky"),
        picky_listener("picky_all", max_attempts=1),
        picky_listener("picky_other", max_attempts=1),
    ]


def with_password(url: str, secret: str) -> tuple[str, str]:
    """``url`` with a password (``secret`` unless it has one); returns (url, password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or "postgres"
    netloc = f"{user}:{secret}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), secret


@dataclass
class Operated:
    """A running installation whose URLs hold passwords (``secrets``), which
    must never be logged."""

    installation: Installation
    secrets: list[str]


@contextlib.contextmanager
def logs_on_failure(request: pytest.FixtureRequest, installation: Installation) -> Iterator[None]:
    """Print the installation's logs if a test failed while it ran; close it after."""
    failures_before = request.session.testsfailed
    try:
        yield
    finally:
        try:
            if request.session.testsfailed > failures_before:
                capture = request.config.pluginmanager.getplugin("capturemanager")
                with capture.global_and_fixture_disabled():
                    sys.stderr.write(f"\n===== service logs of {installation!r} =====\n")
                    sys.stderr.write(installation.logs() + "\n")
        finally:
            installation.close()


def with_passwords(postgres: Postgres, workdir: Path, *, name: str, **options: Any) -> Operated:
    """``Installation.create`` whose database URL holds a password, as the
    broker's does (PostgreSQL here does not check it)."""
    database = unique_name("cw_test")
    database_url, db_password = with_password(postgres.url(database), unique_name("s3cret"))
    broker_password = urllib.parse.urlsplit(BROKER_URL).password
    settings = {"DATABASE_URL": database_url, **options.pop("settings", {})}
    installation = Installation.create(
        postgres, workdir, name=name, database_name=database, settings=settings, **options
    )
    return Operated(installation, [p for p in (db_password, broker_password) if p])


def _operated(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    settings: Mapping[str, str] = {},
) -> Iterator[Operated]:
    operated = with_passwords(
        postgres,
        tmp_path_factory.mktemp(name),
        name=name,
        listeners=operated_listeners(),
        settings=settings,
    )
    with logs_on_failure(request, operated.installation):
        operated.installation.start_workers()
        operated.installation.start_api()
        yield operated


@pytest.fixture(scope="package")
def operated(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[Operated]:
    # LOG_LEVEL=DEBUG: test_logs follows one message, whose lines are DEBUG's.
    yield from _operated(request, postgres, tmp_path_factory, "ops", {"LOG_LEVEL": "DEBUG"})


@pytest.fixture(scope="package")
def ops(operated: Operated) -> Installation:
    return operated.installation


@pytest.fixture(scope="package")
def spare(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[Installation]:
    for started in _operated(
        request, postgres, tmp_path_factory, "spare", {"CONSISTENCY_TIMEOUT": "3"}
    ):
        yield started.installation


@pytest.fixture(scope="package")
def started_scenarios(
    request: pytest.FixtureRequest,
    postgres: Postgres,
    tmp_path_factory: pytest.TempPathFactory,
    rabbitmq: None,
) -> Iterator[tuple[Installation, requests.Response]]:
    """The scenarios' installation, and the answer to its first GET /warehouse/products."""
    installation = Installation.create(
        postgres,
        tmp_path_factory.mktemp("scenarios"),
        name="e2e",
        listeners=[*project_listeners(), WATCHER, SHIPMENT_RECORDER],
    )
    with logs_on_failure(request, installation):
        installation.start_api()
        installation.start_workers()
        yield installation, installation.get("/warehouse/products")


@pytest.fixture(scope="package")
def scenarios(started_scenarios: tuple[Installation, requests.Response]) -> Installation:
    return started_scenarios[0]


@pytest.fixture(scope="package")
def first_products_response(
    started_scenarios: tuple[Installation, requests.Response],
) -> requests.Response:
    return started_scenarios[1]
