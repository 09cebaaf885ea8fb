"""`cqrs-warehouse migrate`: peewee's runner per slice, safe to run again, and on
PostgreSQL a schema per slice."""

from __future__ import annotations

import peewee
import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.processors.low_quantity import NotifierProduct
from cqrs_warehouse.warehouse.views.products import ProductView


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_url(request, tmp_path, postgres_databases) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    return postgres_databases.create()


def test_migrate_applies_every_slice_once_and_is_safe_to_run_again(fresh_url):
    db = open_database(fresh_url)
    try:
        pending = migrations.status(db)
        assert pending and not any(applied for _, _, applied in pending)
        applied = migrations.migrate(db)
        assert sorted(applied) == sorted(f"{s}/{n}" for s, n, _ in pending)
        assert migrations.migrate(db) == []
        assert all(applied for _, _, applied in migrations.status(db))
    finally:
        db.close()


def test_on_postgresql_each_slice_keeps_its_tables_in_its_own_schema(postgres_databases):
    db = open_database(postgres_databases.create())
    try:
        migrations.migrate(db)
        expected = {
            ProductStock: "warehouse",
            ProductView: "products_view",
            NotifierProduct: "low_quantity_notifier",
            OutboxRecord: "messaging",
        }
        for model, schema in expected.items():
            assert model._meta.table_name in db.get_tables(schema=schema)
            assert model._meta.table_name not in db.get_tables(schema="public")
        # and the history of each slice lives with its tables
        assert "messaging_schema_migrations" in db.get_tables(schema="messaging")
    finally:
        db.close()


def test_a_database_that_was_not_migrated_says_so(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/empty.db")
    try:
        with pytest.raises(peewee.OperationalError, match="no such table"):
            ProductView.select().count()
    finally:
        db.close()
