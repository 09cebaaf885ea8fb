"""A connection that breaks during COMMIT, on the real PostgreSQL: the API
answers 503 "Outcome unknown." (not "nothing was changed"), and a retry with
the same Idempotency-Key applies the command exactly once in all, whether
the COMMIT was lost on its way or only its answer was.

The break is real: the runtime talks to PostgreSQL through a TCP proxy that,
once armed, cuts its connection at the next COMMIT, either before forwarding
it (the server rolls back) or once the server has answered it (committed,
the answer lost).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import falcon.testing
import pytest

from cqrs_warehouse.messaging.errors import CommitOutcomeUnknownError
from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.web import create_app
from tests.conftest import settings_for
from tests.support.services import unique_name

pytestmark = pytest.mark.parametrize("runtime", ["postgres"], indirect=True)


class CommitCutter:
    """A TCP proxy to PostgreSQL; ``arm("before")`` or ``arm("after")`` cuts the
    connection that next sends a COMMIT, before forwarding it or once PostgreSQL
    has answered it."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed: str | None = None
        self.cuts = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, when: str) -> None:
        self.armed = when

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            cut_after = threading.Event()
            threading.Thread(
                target=self._to_server, args=(client, server, cut_after), daemon=True
            ).start()
            threading.Thread(
                target=self._to_client, args=(server, client, cut_after), daemon=True
            ).start()

    def _take(self) -> str | None:
        with self.lock:
            when, self.armed = self.armed, None
            if when is not None:
                self.cuts += 1
            return when

    def _to_server(self, client: socket.socket, server: socket.socket, cut_after) -> None:
        try:
            while data := client.recv(65536):
                # A simple Query message ends with its text's NUL: "...COMMIT\0".
                when = self._take() if data.endswith(b"COMMIT\x00") and self.armed else None
                if when == "before":
                    _close(client, server)
                    return
                if when == "after":
                    cut_after.set()
                server.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def _to_client(self, server: socket.socket, client: socket.socket, cut_after) -> None:
        try:
            while data := server.recv(65536):
                if cut_after.is_set():  # the COMMIT's answer: PostgreSQL has committed
                    break
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.fixture
def cutter(runtime) -> Iterator[CommitCutter]:
    parts = urllib.parse.urlsplit(runtime.settings.database_url)
    proxy = CommitCutter(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield proxy
    proxy.close()


@pytest.fixture
def through(runtime, cutter) -> Iterator[Runtime]:
    """A runtime on the same database, through the proxy (its models bound)."""
    parts = urllib.parse.urlsplit(runtime.settings.database_url)
    proxied = parts._replace(netloc=f"postgres@127.0.0.1:{cutter.port}", query="sslmode=disable")
    built = build(settings_for(urllib.parse.urlunsplit(proxied)), embedded=True)
    yield built
    built.database.close()
    runtime.bind_models()


@pytest.fixture
def client(through) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(through))


@pytest.fixture
def on_hand(runtime, postgres):
    """(quantity on hand, events in the outbox) of a SKU, read on a connection of its own."""
    database_name = runtime.settings.database_url.rsplit("/", 1)[1]

    def read(sku):
        connection = postgres.connect(database_name)
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    'SELECT quantity FROM "warehouse"."warehouse_product_stock" WHERE sku = %s',
                    (sku,),
                )
                row = cursor.fetchone()
                cursor.execute(
                    'SELECT count(*) FROM "messaging"."messaging_outbox" WHERE stream = %s', (sku,)
                )
                return (None if row is None else row[0]), cursor.fetchone()[0]
        finally:
            connection.close()

    return read


def increase(client, sku, key=None):
    headers = {"Idempotency-Key": key} if key else {}
    return client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 5}, headers=headers
    )


def assert_outcome_unknown(response):
    assert response.status_code == 503, response.text
    assert response.json["title"] == "Outcome unknown."
    assert "same Idempotency-Key" in response.json["description"]
    assert "nothing was changed" not in response.json["description"]
    assert response.headers["Retry-After"] == "1"
    assert "X-Consistency-Token" not in response.headers


def test_a_commit_lost_on_its_way_is_an_unknown_outcome_and_the_retry_applies_it_once(
    cutter, client, on_hand, sku
):
    key = unique_name("key")
    cutter.arm("before")
    assert_outcome_unknown(increase(client, sku, key))
    assert cutter.cuts == 1
    assert on_hand(sku) == (None, 0)  # PostgreSQL rolled it back
    retried = increase(client, sku, key)
    assert retried.status_code == 200, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert on_hand(sku) == (5, 1)


def test_a_commit_whose_answer_was_lost_is_an_unknown_outcome_and_the_retry_replays_it(
    cutter, client, on_hand, sku
):
    key = unique_name("key")
    cutter.arm("after")
    assert_outcome_unknown(increase(client, sku, key))
    assert cutter.cuts == 1
    assert on_hand(sku) == (5, 1)  # it had committed
    retried = increase(client, sku, key)
    assert retried.status_code == 200, retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json["sku"] == sku and retried.headers["X-Consistency-Token"]
    assert on_hand(sku) == (5, 1)


def test_without_a_key_a_broken_commit_is_an_unknown_outcome_too(cutter, client, on_hand, sku):
    cutter.arm("after")
    assert_outcome_unknown(increase(client, sku))
    assert on_hand(sku) == (5, 1)
    assert increase(client, sku).status_code == 200  # the connection was replaced


def test_the_database_raises_a_commit_outcome_unknown_error_not_the_rollbacks(
    cutter, through, on_hand, sku
):
    database = through.database
    database.execute_sql("SELECT 1")
    cutter.arm("before")
    with pytest.raises(CommitOutcomeUnknownError), database.atomic():
        ProductStock.insert(sku=sku, quantity=1, version=1).execute()
    database.discard_broken_connection()
    assert on_hand(sku) == (None, 0)
