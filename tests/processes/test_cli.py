"""The admin CLI, run as operators run it: `cqrs-warehouse ...` subprocesses
with the service's environment. Here: help and usage, migrate, outbox status
and archive prune, on databases no service runs on. Dead letters, routes and
rebuild: test_cli_dead_letters.py and test_cli_routes.py."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cqrs_warehouse import cli as cli_module
from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.storage.database import open_database
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.settings import DEFAULT_SLICES
from cqrs_warehouse.slices import load_slices
from tests.processes.conftest import with_password
from tests.processes.state import INCREASED
from tests.support.environment import service_env
from tests.support.installation import Installation, project_listeners
from tests.support.processes import BIN, ROOT, Finished, run_to_exit
from tests.support.services import Postgres, unique_name

pytestmark = pytest.mark.processes

#: Every command and subcommand the README documents.
DOCUMENTED_COMMANDS = {
    ("migrate",),
    ("serve",),
    ("outbox", "status"),
    ("dead-letters", "list"),
    ("dead-letters", "show"),
    ("dead-letters", "replay"),
    ("dead-letters", "discard"),
    ("routes", "explain"),
    ("routes", "lint"),
    ("rebuild",),
    ("archive", "prune"),
}
NOT_A_COMMAND = "no-such-command"


def cli(*args: str, env: dict[str, str], cwd: Path = ROOT) -> Finished:
    """``cqrs-warehouse ARGS`` to its exit, as an operator in ``cwd`` runs it."""
    return run_to_exit([str(BIN / "cqrs-warehouse"), *args], env=env, cwd=cwd)


def assert_ok(finished: Finished) -> str:
    """Its standard output, once it exited 0."""
    assert finished.returncode == 0, finished.output
    return finished.stdout


# --- a migrated database with no service running ------------------------------


@pytest.fixture(scope="module")
def cli_db(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    """A migrated installation; nothing runs on it (its CLI runs without BROKER_URL)."""
    installation = Installation.create(
        postgres, tmp_path_factory.mktemp("cli"), name="cli", listeners=project_listeners()
    )
    yield installation
    installation.close()


def offline(installation: Installation, *args: str) -> Finished:
    return installation.cli(*args, env={"BROKER_URL": None})


# --- --help --------------------------------------------------------------------


def subcommands(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The subcommands of ``path``, as its usage error lists them (none for a command)."""
    try:
        cli_module.parser().parse_args([*path, NOT_A_COMMAND])
    except SystemExit:
        refused = re.search(r"invalid choice: .*\(choose from (.*)\)", capsys.readouterr().err)
        if refused:
            return [name.strip().strip("'") for name in refused[1].split(",")]
    return []


def command_paths(
    capsys: pytest.CaptureFixture[str], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """Every command path of the CLI: ('outbox',), ('outbox', 'status'), ..."""
    for name in subcommands(prefix, capsys):
        yield (*prefix, name)
        yield from command_paths(capsys, (*prefix, name))


def test_every_command_and_subcommand_answers_help(capsys):
    paths = list(command_paths(capsys))
    assert set(paths) >= DOCUMENTED_COMMANDS, DOCUMENTED_COMMANDS - set(paths)
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as stopped:
            cli_module.main([*path, "--help"])
        assert stopped.value.code == 0, path
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: {' '.join(('cqrs-warehouse', *path))}"), shown
        assert "-h, --help" in shown
    # The installed entry point too
    output = assert_ok(cli("--help", env=service_env()))
    for name in ("migrate", "outbox", "dead-letters", "routes", "rebuild", "archive"):
        assert name in output


def test_a_command_without_its_subcommand_is_a_usage_error():
    finished = cli("dead-letters", env=service_env())
    assert finished.returncode == 2
    assert "usage: cqrs-warehouse dead-letters" in finished.stderr


# --- migrate -------------------------------------------------------------------


def test_migrate_applies_every_pending_migration_once_and_status_lists_them(postgres: Postgres):
    url, password = with_password(postgres.create(), "s3cret-migrate")
    env = service_env(DATABASE_URL=url)

    def status() -> dict[str, str]:
        output = assert_ok(cli("migrate", "--status", env=env))
        rows = [line.split() for line in output.splitlines() if line.strip()]
        assert rows and all(len(row) == 2 for row in rows), output
        return {name: state for state, name in rows}

    # Given a fresh database, everything is pending, for every store of every slice
    before = status()
    assert set(before.values()) == {"pending"}
    stores = {store.name for slice_ in load_slices(DEFAULT_SLICES) for store in slice_.stores}
    assert {name.split("/")[0] for name in before} == stores
    # When migrate runs, it applies exactly those and says the database is up to date
    migrated = cli("migrate", env=env)
    output = assert_ok(migrated)
    applied = [line.split()[1] for line in output.splitlines() if line.startswith("applied")]
    assert sorted(applied) == sorted(before), output
    assert "is up to date" in output
    assert password not in migrated.output and "***" in output
    # Then status shows them applied, the tables exist, and a second run applies nothing
    assert set(status().values()) == {"applied"}
    database = open_database(url)
    try:
        assert database.table_exists("messaging_outbox", schema="messaging")
        assert database.table_exists("warehouse_product_stock", schema="warehouse")
    finally:
        database.close()
    again = assert_ok(cli("migrate", env=env))
    assert not [line for line in again.splitlines() if line.startswith("applied")], again
    assert "is up to date" in again


# --- outbox status ---------------------------------------------------------------


def outbox_status(installation: Installation) -> tuple[int, float | None]:
    output = assert_ok(offline(installation, "outbox", "status"))
    waiting = re.search(r"^waiting:\s+(\d+)$", output, re.M)
    oldest = re.search(r"^oldest:\s+(-|[\d.]+s)$", output, re.M)
    assert waiting and oldest, output
    age = None if oldest[1] == "-" else float(oldest[1].rstrip("s"))
    return int(waiting[1]), age


def test_outbox_status_shows_the_rows_waiting_and_the_age_of_the_oldest(cli_db, sku):
    with cli_db.reading():
        OutboxRecord.delete().execute()
    assert outbox_status(cli_db) == (0, None)
    # Given three commands and no drain running
    with cli_db.reading() as runtime:
        commands = runtime.services["warehouse"].commands
        commands.increase_product_quantity(sku, 10)
        commands.ship_product_quantity(sku, 3)
        commands.increase_product_quantity(f"{sku}-b", 1)
        oldest = OutboxRecord.select().order_by(OutboxRecord.id).first()
        # ...the first of them written two minutes ago
        OutboxRecord.update(
            created_at=OutboxRecord.created_at - datetime.timedelta(seconds=120)
        ).where(OutboxRecord.id == oldest.id).execute()
    try:
        waiting, age = outbox_status(cli_db)
        assert waiting == 3
        assert age is not None and 120 <= age < 3600
    finally:
        with cli_db.reading():
            OutboxRecord.delete().execute()


# --- archive prune -------------------------------------------------------------------------


def archive(installation: Installation, sku: str, ages_in_days: list[int]) -> None:
    """The archive holds exactly one increase of ``sku`` per age, positions 1, 2..."""
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with installation.reading() as runtime:
        ArchivedMessage.delete().execute()
        for n, age in enumerate(ages_in_days):
            ArchivedMessage.create(
                message_id=unique_name("m"),
                type=INCREASED,
                schema_version=1,
                payload=runtime.registry.encode(INCREASED, 1, {"sku": sku, "quantity": n + 1}),
                stream=sku,
                position=n + 1,
                archived_at=now - datetime.timedelta(days=age),
            )


def test_archive_prune_drops_only_messages_older_than_the_given_days(cli_db, sku):
    archive(cli_db, sku, [10, 6, 1])
    output = assert_ok(offline(cli_db, "archive", "prune", "--older-than", "5"))
    assert output.strip() == "pruned 2 archived messages older than 5 days"
    with cli_db.reading():
        assert [m.position for m in ArchivedMessage.select()] == [3]
    pruned_again = assert_ok(offline(cli_db, "archive", "prune", "--older-than", "5"))
    assert pruned_again.startswith("pruned 0")
    missing = offline(cli_db, "archive", "prune")
    assert missing.returncode == 2 and "--older-than" in missing.stderr


@pytest.mark.parametrize("days", ["-1", "nan", "inf"])
def test_archive_prune_refuses_a_negative_or_infinite_age(cli_db, sku, days):
    # A negative age would be a cut-off in the future: it would drop the whole archive.
    archive(cli_db, sku, [0])
    finished = offline(cli_db, "archive", "prune", "--older-than", days)
    assert finished.returncode == 2, finished.output
    assert "--older-than" in finished.stderr and "Traceback" not in finished.stderr
    with cli_db.reading():
        assert ArchivedMessage.select().count() == 1
