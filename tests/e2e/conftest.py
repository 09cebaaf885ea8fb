"""The ``installation`` fixture: one running service per test module.

Tests sharing it stay apart by using SKUs of their own (the ``sku`` fixture).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.testing import create_watcher_table
from tests.conftest import BROKER_URL, PostgresDatabases, unique_name
from tests.e2e.custom_listener import ReceivedMessage
from tests.e2e.harness import (
    BIN,
    CUSTOM_LISTENER,
    GUNICORN_CONF,
    WATCHER,
    Installation,
    Service,
    delete_rabbitmq_topology,
    free_port,
    project_listeners,
    require_rabbitmq,
    run_to_exit,
    service_env,
    wait_for_http,
    write_listeners_config,
)


@pytest.fixture(scope="module")
def installation(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Installation]:
    require_rabbitmq()
    failures_before = request.session.testsfailed
    workdir = tmp_path_factory.mktemp("installation")
    database_url = postgres_databases.create()
    queue_prefix = unique_name("e2e") + "."
    listeners = [*project_listeners(), WATCHER, CUSTOM_LISTENER]
    config = write_listeners_config(workdir / "listeners.yaml", listeners)
    port = free_port()
    env = service_env(
        DATABASE_URL=database_url,
        BROKER_URL=BROKER_URL,
        LISTENERS_CONFIG=str(config),
        QUEUE_PREFIX=queue_prefix,
        OUTBOX_SWEEP_INTERVAL="0.5",
        WEB_CONCURRENCY="2",
    )

    migrated = run_to_exit([str(BIN / "cqrs-warehouse"), "migrate"], env=env, cwd=workdir)
    assert migrated.returncode == 0, migrated.output
    db = open_database(database_url)
    create_watcher_table()
    ReceivedMessage.create_table(safe=True)

    installation = Installation(
        database_url=database_url,
        queue_prefix=queue_prefix,
        base_url=f"http://127.0.0.1:{port}",
        db=db,
        listener_names=[entry["name"] for entry in listeners],
    )
    try:
        installation.services.append(
            Service.start(
                "gunicorn",
                [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}"],
                env=env,
                cwd=workdir,
                log_dir=workdir,
            )
        )
        installation.services.append(
            Service.start(
                "dramatiq",
                [str(BIN / "dramatiq"), "cqrs_warehouse.worker", "-p", "2", "-t", "4"],
                env=env,
                cwd=workdir,
                log_dir=workdir,
            )
        )
        installation.first_products_response = wait_for_http(
            installation.base_url + "/warehouse/products", installation.services
        )
        yield installation
    finally:
        for service in installation.services:
            service.terminate()
            service.kill_leftovers()
        if request.session.testsfailed > failures_before:
            capture = request.config.pluginmanager.getplugin("capturemanager")
            with capture.global_and_fixture_disabled():
                sys.stderr.write(f"\n===== service logs of {queue_prefix} =====\n")
                sys.stderr.write(installation.logs() + "\n")
        db.close()
        delete_rabbitmq_topology(queue_prefix, installation.listener_names)
