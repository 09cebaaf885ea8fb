"""Fixtures every tier shares. The database tier runs each test on SQLite and
on PostgreSQL; tiers that need PostgreSQL or RabbitMQ fail, never skip, when
one is missing (tests/support/services.py says where they are looked for).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cqrs_warehouse import migrations
from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.settings import DEFAULT_SLICES, Settings
from cqrs_warehouse.slices import load_slices
from tests.support.environment import SCHEMAS, TEST_SLICES
from tests.support.processes import ROOT
from tests.support.services import Postgres, ServiceMissing, require_rabbitmq, unique_name

#: The slices the database tier runs with: the warehouse and the tests' own.
SLICES = (*DEFAULT_SLICES, *TEST_SLICES)
LISTENERS_CONFIG = ROOT / "config" / "listeners.yaml"


@pytest.fixture
def sku() -> str:
    return unique_name("sku")


@pytest.fixture(scope="session")
def rabbitmq() -> None:
    """The tests' RabbitMQ answers (else the test fails, never skips)."""
    try:
        require_rabbitmq()
    except ServiceMissing as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Creates PostgreSQL databases of the tests' own; drops them at the end."""
    databases = Postgres()
    try:
        databases.connect().close()
    except ServiceMissing as error:
        pytest.fail(str(error))
    yield databases
    databases.drop_all()


def settings_for(database_url: str, **more: object) -> Settings:
    """The settings of a test's runtime: the project's listeners.yaml and schemas."""
    values: dict[str, object] = {
        "database_url": database_url,
        "schemas_dir": str(SCHEMAS),
        "listeners_config": str(LISTENERS_CONFIG),
        "queue_prefix": unique_name("t") + ".",
        "slices": SLICES,
        **more,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> dict[str, str]:
    """A migrated SQLite file and PostgreSQL database, shared by the database tier."""
    urls = {
        "sqlite": f"sqlite:///{tmp_path_factory.mktemp('sqlite')}/test.db",
        "postgres": postgres.create(),
    }
    slices = load_slices(SLICES)
    for url in urls.values():
        runtime = build(settings_for(url), embedded=True)
        migrations.migrate(runtime.database, slices)
        runtime.database.close()
    return urls


def empty_tables(runtime: Runtime) -> None:
    for slice_ in runtime.slices:
        for store in slice_.stores:
            for model in store.models:
                model.delete().execute()


@pytest.fixture(params=["sqlite", "postgres"])
def runtime(request: pytest.FixtureRequest, migrated: dict[str, str]) -> Iterator[Runtime]:
    """A runtime on the migrated database, every table emptied; once on SQLite
    and once on PostgreSQL. Nothing runs in the background: tests drive the
    engine, the drain and the API themselves."""
    built = build(settings_for(migrated[request.param]), embedded=True)
    with built.database.connection_context():
        empty_tables(built)
    yield built
    built.database.close()
