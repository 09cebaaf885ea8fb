"""`cqrs-warehouse migrate`: peewee's runner per store of each slice, safe to run
again, and on PostgreSQL a schema per store."""

from __future__ import annotations

import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging.errors import MissingTableError, TransientStorageError
from cqrs_warehouse.messaging.storage.database import open_database
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.runtime import build
from cqrs_warehouse.slices import load_slices
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.processors.low_quantity import NotifierProduct
from cqrs_warehouse.warehouse.views.products import ProductView
from tests.conftest import SLICES, settings_for
from tests.slices.recorders import WatchedMessage
from tests.slices.returns.returns import ReturnCount, ReturnedQuantity


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path, postgres) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return postgres.create()


def test_migrate_applies_every_store_once_and_is_safe_to_run_again(fresh_url):
    db = open_database(fresh_url)
    slices = load_slices(SLICES)
    try:
        pending = migrations.status(db, slices)
        assert pending and not any(applied for _, _, applied in pending)
        # every store of every slice, the tests' own included
        assert {store for store, _, _ in pending} == {
            store.name for slice_ in slices for store in slice_.stores
        }
        applied = migrations.migrate(db, slices)
        assert sorted(applied) == sorted(f"{s}/{n}" for s, n, _ in pending)
        assert migrations.migrate(db, slices) == []
        assert all(applied for _, _, applied in migrations.status(db, slices))
    finally:
        db.close()


def test_on_postgresql_each_store_keeps_its_tables_in_its_own_schema(postgres):
    db = open_database(postgres.create())
    try:
        migrations.migrate(db, load_slices(SLICES))
        expected = {
            ProductStock: "warehouse",
            ProductView: "products_view",
            NotifierProduct: "low_quantity_notifier",
            OutboxRecord: "messaging",
            WatchedMessage: "recorders",
            ReturnCount: "returns",
            ReturnedQuantity: "returns",
        }
        for model, schema in expected.items():
            assert model._meta.table_name in db.get_tables(schema=schema)
            assert model._meta.table_name not in db.get_tables(schema="public")
        # and the history of each store lives with its tables
        assert "messaging_schema_migrations" in db.get_tables(schema="messaging")
        assert "returns_schema_migrations" in db.get_tables(schema="returns")
    finally:
        db.close()


def test_a_database_that_was_not_migrated_says_so(tmp_path):
    empty = build(settings_for(f"sqlite:///{tmp_path}/empty.db"), embedded=True)
    try:
        with pytest.raises(MissingTableError, match="no such table") as raised:
            ProductView.select().count()
        assert "cqrs-warehouse migrate" in str(raised.value)
        assert isinstance(raised.value, TransientStorageError)  # retried, never dead-lettered
    finally:
        empty.database.close()


def test_on_postgresql_the_churning_tables_get_their_own_upkeep_settings(postgres):
    # Migration 0009: vacuum thresholds in rows, room for in-page updates.
    url = postgres.create()
    db = open_database(url)
    try:
        migrations.migrate(db, load_slices(SLICES))
        options = {
            name: set(reloptions or [])
            for name, reloptions in db.execute_sql(
                "SELECT relname, reloptions FROM pg_class WHERE relnamespace = "
                "'messaging'::regnamespace AND relkind = 'r'"
            ).fetchall()
        }
    finally:
        db.close()
    assert "autovacuum_vacuum_threshold=1000" in options["messaging_outbox"]
    assert "autovacuum_vacuum_scale_factor=0" in options["messaging_outbox"]
    for table in ("messaging_stream_positions", "messaging_stream_heads"):
        assert "fillfactor=80" in options[table]
    for table in ("messaging_processed_messages", "messaging_idempotency_keys"):
        assert "autovacuum_vacuum_scale_factor=0.02" in options[table]
    assert "autovacuum_vacuum_insert_scale_factor=0.05" in options["messaging_archive"]
