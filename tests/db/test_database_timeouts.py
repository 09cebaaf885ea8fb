"""PostgreSQL's connect, statement and lock timeouts (DATABASE_*_TIMEOUT): on
every connection; a statement or a lock wait past them is transient (a 503
from the API, which changes nothing); maintenance and the migrations' advisory
lock are exempt; a database that never answers gets a 503 within the connect
timeout. (SQLite has none of these timeouts: PostgreSQL only.)"""

from __future__ import annotations

import socket
import threading
import wsgiref.simple_server
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import falcon.testing
import pytest
import requests

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging.errors import TransientStorageError
from cqrs_warehouse.messaging.storage.database import Timeouts, open_database
from cqrs_warehouse.messaging.storage.models import OutboxRecord, qualified_name
from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.web import create_app
from tests.conftest import settings_for
from tests.support.services import unique_name
from tests.support.waiting import eventually

on_postgres = pytest.mark.parametrize("runtime", ["postgres"], indirect=True)


def show(database: Any, name: str) -> str:
    return str(database.execute_sql(f"SHOW {name}").fetchone()[0])


@on_postgres
def test_every_connection_has_the_timeouts_of_the_settings(runtime, runtime_with):
    assert show(runtime.database, "statement_timeout") == "30s"  # the defaults
    assert show(runtime.database, "lock_timeout") == "10s"
    timed = runtime_with(
        database_connect_timeout=3, database_statement_timeout=1.5, database_lock_timeout=0.25
    )
    assert show(timed.database, "statement_timeout") == "1500ms"
    assert show(timed.database, "lock_timeout") == "250ms"
    assert timed.database.connection().info.dsn_parameters["connect_timeout"] == "3"
    # The LISTEN connections too (the drain's wake-ups, read-your-writes).
    subscription = timed.storage.signals.subscribe(unique_name("channel"))
    try:
        connection = subscription._connection  # type: ignore[attr-defined]
        with connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone() == ("1500ms",)
        assert connection.info.dsn_parameters["connect_timeout"] == "3"
    finally:
        subscription.close()


@on_postgres
def test_options_in_the_database_url_win_over_the_settings(runtime):
    url = runtime.settings.database_url + "?options=-c%20statement_timeout%3D7s"
    database = open_database(url, Timeouts(connect=5, statement=30, lock=10))
    try:
        assert show(database, "statement_timeout") == "7s"
        assert show(database, "lock_timeout") == "10s"
    finally:
        database.close()


@on_postgres
def test_a_statement_past_the_statement_timeout_is_transient(runtime_with):
    database = runtime_with(database_statement_timeout=0.2).database
    with pytest.raises(TransientStorageError, match="statement timeout"):
        database.execute_sql("SELECT pg_sleep(5)")
    assert database.execute_sql("SELECT 1").fetchone() == (1,)  # the connection goes on


@contextmanager
def row_locked(url: str, sku: str) -> Iterator[None]:
    """The SKU's stock row locked by another connection (no timeouts) for the block."""
    holder = open_database(url)
    try:
        with holder.atomic():
            holder.execute_sql(
                f"SELECT 1 FROM {qualified_name(ProductStock)} WHERE sku = %s FOR UPDATE", (sku,)
            )
            yield
    finally:
        holder.close()


@on_postgres
@pytest.mark.parametrize(
    ("timeouts", "cause"),
    [
        ({"database_statement_timeout": 0.3, "database_lock_timeout": 0}, "statement timeout"),
        ({"database_statement_timeout": 0, "database_lock_timeout": 0.3}, "lock timeout"),
    ],
    ids=["statement", "lock"],
)
def test_a_command_that_waits_past_a_timeout_answers_503_and_changes_nothing(
    runtime, runtime_with, commands, sku, timeouts, cause, caplog
):
    commands.increase_product_quantity(sku, 5)
    client = falcon.testing.TestClient(create_app(runtime_with(**timeouts)))
    with row_locked(runtime.settings.database_url, sku):
        response = client.simulate_post(
            f"/warehouse/products/{sku}/ship_quantity", json={"quantity": 1}
        )
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert cause in caplog.text  # what the database said, in the log
    assert ProductStock.get_by_id(sku).quantity == 5
    assert OutboxRecord.select().count() == 1  # the increase's event only


@on_postgres
def test_unbounded_lifts_the_timeouts_for_its_block_or_its_transaction(runtime_with):
    database = runtime_with(database_statement_timeout=0.2, database_lock_timeout=0.1).database
    with database.unbounded():
        database.execute_sql("SELECT pg_sleep(0.5)")
    assert (show(database, "statement_timeout"), show(database, "lock_timeout")) == (
        "200ms",
        "100ms",
    )
    with database.atomic(), database.unbounded():  # SET LOCAL: until the transaction ends
        database.execute_sql("SELECT pg_sleep(0.5)")
    assert show(database, "statement_timeout") == "200ms"


def waiting_on_a_lock(database: Any, kind: str, longer_than: float) -> None:
    """Some session of this database waits for a lock of ``kind`` (advisory,
    relation...) since more than ``longer_than`` seconds."""
    (waiting,) = database.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = %s "
        "AND clock_timestamp() - query_start > make_interval(secs => %s)",
        (kind, longer_than),
    ).fetchone()
    assert waiting == 1


@on_postgres
def test_migrate_waits_for_a_concurrent_migrate_however_long(runtime, runtime_with):
    timed = runtime_with(database_lock_timeout=0.1)
    holder = open_database(runtime.settings.database_url)
    holder.execute_sql("SELECT pg_advisory_lock(%s)", (migrations._LOCK_KEY,))
    outcome: dict[str, Any] = {}

    def migrate() -> None:
        try:
            outcome["applied"] = migrations.migrate(timed.database, timed.slices)
        except Exception as error:
            outcome["error"] = error
        finally:
            timed.database.close()

    thread = threading.Thread(target=migrate)
    thread.start()
    try:
        # Waiting longer than its lock timeout, and still waiting.
        eventually(lambda: waiting_on_a_lock(holder, "advisory", 0.5), timeout=30)
    finally:
        holder.execute_sql("SELECT pg_advisory_unlock(%s)", (migrations._LOCK_KEY,))
        holder.close()
        thread.join(timeout=60)
    assert outcome == {"applied": []}


@pytest.fixture
def silent_database() -> Iterator[str]:
    """The URL of a PostgreSQL that never answers: a socket that listens but
    never accepts (the kernel completes the handshake; libpq then waits)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"postgresql://postgres@127.0.0.1:{listener.getsockname()[1]}/nowhere"


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on a real HTTP server in a thread; its base URL."""
    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_api_answers_503_within_the_connect_timeout_while_the_database_does_not_answer(
    silent_database, sku
):
    runtime = build(settings_for(silent_database, database_connect_timeout=2), embedded=True)
    # The bound is the HTTP client's deadline: the connect timeout and some slack.
    deadline = 2 + 8
    with serving(create_app(runtime)) as base:
        response = requests.post(
            f"{base}/warehouse/products/{sku}/increase_quantity",
            json={"quantity": 1},
            timeout=deadline,
        )
        assert response.status_code == 503, response.text
        ready = requests.get(f"{base}/readyz", timeout=deadline)
        assert ready.status_code == 503, ready.text
        assert ready.json()["title"] == "Not ready: database."
