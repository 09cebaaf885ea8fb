"""Shared fixtures. Database tests run on SQLite and PostgreSQL; end-to-end
tests use the real PostgreSQL and RabbitMQ and fail, never skip, when one is
missing.

TEST_POSTGRES_URL names a PostgreSQL database the tests may use to create and
drop databases of their own (default postgresql://postgres@127.0.0.1:5432/postgres);
TEST_BROKER_URL names RabbitMQ (default amqp://guest:guest@127.0.0.1:5672/).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import peewee
import psycopg2
import pytest
from playhouse.db_url import parse as parse_url

from cqrs_warehouse import migrations
from cqrs_warehouse.messaging import outbox
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.outbox import Outbox
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.warehouse.processors import low_quantity

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


def unique_name(prefix: str) -> str:
    """A name no other test or run on this machine uses (databases, queue prefixes, SKUs)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sku() -> str:
    return unique_name("sku")


def _admin_connection() -> psycopg2.extensions.connection:
    params = parse_url(POSTGRES_ADMIN_URL)
    try:
        connection = psycopg2.connect(
            dbname=params.get("database"),
            user=params.get("user"),
            password=params.get("password"),
            host=params.get("host"),
            port=params.get("port"),
        )
    except psycopg2.OperationalError as error:
        pytest.fail(f"PostgreSQL is required at {POSTGRES_ADMIN_URL}: {error}")
    connection.autocommit = True
    return connection


def postgres_url(database_name: str) -> str:
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{database_name}"


class PostgresDatabases:
    """Creates uniquely named PostgreSQL databases and drops them afterwards."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def create(self) -> str:
        name = unique_name("cw_test")
        connection = _admin_connection()
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        self.created.append(name)
        return postgres_url(name)

    def drop_all(self) -> None:
        connection = _admin_connection()
        with connection.cursor() as cursor:
            for name in self.created:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.close()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def _migrated(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases
) -> dict[str, str]:
    urls = {
        "sqlite": f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/test.db",
        "postgres": postgres_databases.create(),
    }
    for url in urls.values():
        db = open_database(url)
        migrations.migrate(db)
        db.close()
    return urls


def _tables(database: peewee.Database) -> list[str]:
    """Every table of the service, qualified by its slice's schema on PostgreSQL."""
    if not isinstance(database, peewee.PostgresqlDatabase):
        return [f'"{table}"' for table in database.get_tables()]
    schemas = ["public", *(slice_.schema for slice_ in migrations.SLICES)]
    return [f'"{schema}"."{table}"' for schema in schemas for table in database.get_tables(schema)]


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, _migrated: dict[str, str]) -> Iterator[peewee.Database]:
    """The service's database, migrated and emptied, with the outbox installed.

    Runs the test once on SQLite and once on PostgreSQL.
    """
    database = open_database(_migrated[request.param])
    for table in _tables(database):
        if not table.endswith('schema_migrations"'):
            database.execute_sql(f"DELETE FROM {table}")
    outbox.install(Outbox(SchemaRegistry(SCHEMAS), notify_channel=unique_name("test")))
    low_quantity.configure(threshold=low_quantity.DEFAULT_THRESHOLD)
    yield database
    database.close()
