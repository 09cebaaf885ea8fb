"""Driver errors arrive as the messaging error tree (messaging/errors.py),
translated once where the database calls the driver: what passes by itself is
a ``TransientStorageError`` (retried, never dead-lettered; a 503 from the
API), anything else a ``StorageError`` (a 500). On SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3

import falcon.testing
import pytest

from cqrs_warehouse.messaging.errors import (
    ConflictError,
    DatabaseUnavailableError,
    MessagingError,
    MissingTableError,
    RefusedClaimError,
    StorageError,
    TransientStorageError,
)
from cqrs_warehouse.messaging.storage.database import open_database
from cqrs_warehouse.runtime import build
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.web import create_app
from tests.conftest import settings_for
from tests.support.processes import free_port
from tests.support.services import unique_name


def test_the_tree():
    for transient in (DatabaseUnavailableError, ConflictError, MissingTableError):
        assert issubclass(transient, TransientStorageError)
    assert issubclass(TransientStorageError, StorageError)
    assert issubclass(RefusedClaimError, StorageError)
    assert not issubclass(RefusedClaimError, TransientStorageError)
    assert issubclass(StorageError, MessagingError)


def test_a_missing_table_is_a_missing_table_error_that_says_to_migrate(runtime):
    with pytest.raises(MissingTableError, match="cqrs-warehouse migrate"):
        runtime.database.execute_sql("SELECT * FROM no_such_table")
    runtime.database.execute_sql("SELECT 1")  # the connection goes on


def test_a_broken_statement_is_a_storage_error_that_does_not_pass(runtime):
    with pytest.raises(StorageError) as raised:
        runtime.database.execute_sql("SELEKT 1")
    assert not isinstance(raised.value, TransientStorageError)


def test_a_constraint_violation_is_a_storage_error_that_does_not_pass(runtime, commands, sku):
    commands.increase_product_quantity(sku, 1)
    with pytest.raises(StorageError) as raised, runtime.database.atomic():
        ProductStock.insert(sku=sku, quantity=1, version=1).execute()  # the SKU is taken
    assert not isinstance(raised.value, TransientStorageError)
    with pytest.raises(StorageError) as raised, runtime.database.atomic():
        ProductStock.update(quantity=-1).where(ProductStock.sku == sku).execute()  # CHECK >= 0
    assert not isinstance(raised.value, TransientStorageError)


def test_a_connection_to_a_closed_port_is_database_unavailable():
    database = open_database(f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    with pytest.raises(DatabaseUnavailableError):
        database.execute_sql("SELECT 1")
    with pytest.raises(DatabaseUnavailableError):
        database.connect()


def test_a_sqlite_file_that_cannot_be_opened_is_database_unavailable(tmp_path):
    # (A folder where the file should be.)
    database = open_database(f"sqlite:///{tmp_path}")
    with pytest.raises(DatabaseUnavailableError):
        database.execute_sql("SELECT 1")


def test_a_sqlite_file_locked_by_another_writer_is_a_conflict(tmp_path):
    path = tmp_path / "locked.db"
    database = open_database(f"sqlite:///{path}")
    database.execute_sql("CREATE TABLE t (x INTEGER)")
    database.execute_sql("PRAGMA busy_timeout = 1")  # (30 s by default)
    holder = sqlite3.connect(path)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(ConflictError, match="locked"), database.atomic():
            database.execute_sql("INSERT INTO t VALUES (1)")
    finally:
        holder.close()
        database.close()


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
@pytest.mark.parametrize(
    ("sqlstate", "error"),
    [("40001", ConflictError), ("40P01", ConflictError), ("3F000", MissingTableError)],
    ids=["serialization-failure", "deadlock", "missing-schema"],
)
def test_postgresql_errors_that_pass_are_transient(runtime, sqlstate, error):
    with pytest.raises(error):
        runtime.database.execute_sql(
            f"DO $$ BEGIN RAISE EXCEPTION 'as the server would' USING ERRCODE = '{sqlstate}'; "
            "END $$"
        )


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_refused_claim_or_bet_is_a_refused_claim_error(runtime):
    with pytest.raises(RefusedClaimError), runtime.database.atomic():
        runtime.database.execute_sql("""SELECT "messaging".expect(false, 'a test')""")


@pytest.mark.parametrize("runtime", ["postgres"], indirect=True)
def test_a_connection_the_server_ended_is_database_unavailable_and_is_replaced(runtime, postgres):
    database = runtime.database
    database.execute_sql("SELECT 1")
    (pid,) = database.execute_sql("SELECT pg_backend_pid()").fetchone()
    admin = postgres.connect()
    try:
        with admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        admin.close()
    with pytest.raises(DatabaseUnavailableError):
        database.execute_sql("SELECT 1")
    database.discard_broken_connection()
    assert database.execute_sql("SELECT 1").fetchone() == (1,)


# --- what the API answers ---------------------------------------------------------


def test_the_api_answers_a_transient_error_with_a_503_and_nothing_changed(runtime, sku):
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/{unique_name('nowhere')}"
    down = build(settings_for(nowhere), embedded=True)
    try:
        client = falcon.testing.TestClient(create_app(down))
        response = client.simulate_post(
            f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 1}
        )
    finally:
        down.database.close()
        runtime.bind_models()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "1"
    assert response.json["title"] == "Database unavailable."


def test_the_api_answers_a_storage_error_that_does_not_pass_with_a_500(runtime, monkeypatch, sku):
    def refuse(self, sku, quantity):
        runtime.database.execute_sql("SELEKT 1")

    monkeypatch.setattr(
        type(runtime.services["warehouse"].commands), "increase_product_quantity", refuse
    )
    client = falcon.testing.TestClient(create_app(runtime))
    response = client.simulate_post(
        f"/warehouse/products/{sku}/increase_quantity", json={"quantity": 1}
    )
    assert response.status_code == 500, response.text
    assert response.json["title"] == "Database error."
