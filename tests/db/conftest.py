"""Fixtures of the database tier, over the root ``runtime`` fixture (each test
runs on SQLite and on PostgreSQL): the service's defaults, the warehouse's
commands, runtimes with other settings, and the API under Falcon's test client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import pytest

from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.warehouse.commands import Commands
from cqrs_warehouse.web import create_app
from tests.support.environment import SERVICE_VARIABLES


@pytest.fixture(autouse=True)
def service_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the runner's environment reaches a runtime of this tier
    (its slices read their own settings, LOW_QUANTITY_THRESHOLD..., from it):
    the tests expect the defaults unless they set a field themselves."""
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def commands(runtime: Runtime) -> Commands:
    return runtime.services["warehouse"].commands


@pytest.fixture
def runtime_with(runtime: Runtime) -> Iterator[Callable[..., Runtime]]:
    """``runtime_with(**fields)``: a runtime on the test's database whose settings
    differ by ``fields`` (API_TOKEN, CONSISTENCY_TIMEOUT...). The models are
    bound to the last one built; all are on the same database."""
    built: list[Runtime] = []

    def make(**fields: Any) -> Runtime:
        other = build(dataclasses.replace(runtime.settings, **fields), embedded=True)
        built.append(other)
        return other

    yield make
    for other in built:
        other.database.close()
    runtime.bind_models()


@pytest.fixture
def client(runtime: Runtime) -> falcon.testing.TestClient:
    """The API over the test's runtime (no API_TOKEN)."""
    return falcon.testing.TestClient(create_app(runtime))
