"""Fixtures of the operational tests.

``ops`` is one running installation shared by the whole package (tests stay
apart with SKUs of their own); ``spare`` is a second one for the tests that
stop and restart its processes (shutdown, lag). Both print their services'
logs when a test using them failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from tests.conftest import PostgresDatabases
from tests.e2e.harness import require_rabbitmq
from tests.ops.support import OpsInstallation, start_installation


def _installation(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    **options: object,
) -> Iterator[OpsInstallation]:
    require_rabbitmq()
    failures_before = request.session.testsfailed
    with start_installation(
        postgres_databases, tmp_path_factory.mktemp(name), **options
    ) as installation:
        try:
            yield installation
        finally:
            if request.session.testsfailed > failures_before:
                capture = request.config.pluginmanager.getplugin("capturemanager")
                with capture.global_and_fixture_disabled():
                    sys.stderr.write(f"\n===== service logs of {installation!r} =====\n")
                    sys.stderr.write(installation.logs() + "\n")


@pytest.fixture(scope="package")
def ops(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OpsInstallation]:
    yield from _installation(request, postgres_databases, tmp_path_factory, "ops")


@pytest.fixture(scope="package")
def spare(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OpsInstallation]:
    yield from _installation(
        request,
        postgres_databases,
        tmp_path_factory,
        "spare",
        extra_env={"CONSISTENCY_TIMEOUT": "3"},
    )
