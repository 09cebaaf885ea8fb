"""The admin CLI, run as operators run it: `cqrs-warehouse ...` subprocesses
with the service's environment.

Dead letters are made the way production makes them: the ``picky``
listeners of tests/ops/picky.py, running in the shared installation's
dramatiq workers, fail on SKUs a test lists in ``ops_refused_skus``; after
their last attempt the workers store the dead letter.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import peewee
import pytest
import requests

from cqrs_warehouse import cli as cli_module
from cqrs_warehouse import migrations
from cqrs_warehouse.messaging import listener_state
from cqrs_warehouse.messaging import outbox as outbox_module
from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.database import database as database_proxy
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.outbox import Outbox, OutboxRecord
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.warehouse.commands import increase_product_quantity, ship_product_quantity
from tests.conftest import ROOT, SCHEMAS, PostgresDatabases, unique_name
from tests.e2e.harness import (
    INCREASED,
    SHIPPED,
    assert_eventually,
    project_listeners,
    write_listeners_config,
)
from tests.ops.support import (
    CliResult,
    OpsInstallation,
    accept,
    applied_position,
    applied_quantities,
    cli,
    held_positions,
    letter_of,
    ops_env,
    picky_listener,
    process_globals_restored,
    refuse,
    wait_for_held,
    wait_for_letter,
    with_password,
)

REGISTRY = SchemaRegistry(SCHEMAS)

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


def assert_ok(finished: CliResult) -> str:
    """Its standard output, once it exited 0."""
    assert finished.returncode == 0, finished.output
    return finished.stdout


# --- a migrated database with no service running ------------------------------


@dataclass
class CliDatabase:
    url: str
    db: peewee.Database
    env: dict[str, str]

    def run(self, *args: str) -> CliResult:
        return cli(args, env=self.env, cwd=ROOT)

    def bind(self) -> None:
        database_proxy.initialize(self.db)


@pytest.fixture(scope="module")
def cli_db(postgres_databases: PostgresDatabases) -> Iterator[CliDatabase]:
    url = postgres_databases.create()
    env = ops_env(DATABASE_URL=url, BROKER_URL=None, QUEUE_PREFIX=unique_name("cli") + ".")
    assert_ok(cli(["migrate"], env=env, cwd=ROOT))
    with process_globals_restored():
        db = open_database(url)
    yield CliDatabase(url, db, env)
    db.close()


@contextlib.contextmanager
def commands_on(database: CliDatabase) -> Iterator[None]:
    """Run commands in this process against ``database`` (no drain runs)."""
    with process_globals_restored():
        database.bind()
        outbox_module.install(Outbox(REGISTRY, notify_channel=unique_name("cli")))
        yield


# --- --help --------------------------------------------------------------------


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command path of the parser: ('outbox',), ('outbox', 'status'), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield (*prefix, name)
                yield from command_paths(subparser, (*prefix, name))


def test_every_command_and_subcommand_answers_help(capsys):
    paths = list(command_paths(cli_module._parser()))
    assert set(paths) >= DOCUMENTED_COMMANDS, DOCUMENTED_COMMANDS - set(paths)
    for path in [(), *paths]:
        with pytest.raises(SystemExit) as stopped:
            cli_module.main([*path, "--help"])
        assert stopped.value.code == 0, path
        shown = capsys.readouterr().out
        assert shown.startswith(f"usage: {' '.join(('cqrs-warehouse', *path))}"), shown
        assert "-h, --help" in shown
    # The installed entry point too
    finished = cli(["--help"], env=ops_env(), cwd=ROOT)
    output = assert_ok(finished)
    for name in ("migrate", "outbox", "dead-letters", "routes", "rebuild", "archive"):
        assert name in output


def test_a_command_without_its_subcommand_is_a_usage_error():
    finished = cli(["dead-letters"], env=ops_env(), cwd=ROOT)
    assert finished.returncode == 2
    assert "usage: cqrs-warehouse dead-letters" in finished.stderr


# --- migrate -------------------------------------------------------------------


def test_migrate_applies_every_pending_migration_once_and_status_lists_them(
    postgres_databases: PostgresDatabases,
):
    url, password = with_password(postgres_databases.create(), "s3cret-migrate")
    env = ops_env(DATABASE_URL=url)

    def status() -> dict[str, str]:
        output = assert_ok(cli(["migrate", "--status"], env=env, cwd=ROOT))
        rows = [line.split() for line in output.splitlines() if line.strip()]
        assert rows and all(len(row) == 2 for row in rows), output
        return {name: state for state, name in rows}

    # Given a fresh database, everything is pending, for every slice
    before = status()
    assert set(before.values()) == {"pending"}
    assert {name.split("/")[0] for name in before} == {s.name for s in migrations.SLICES}
    # When migrate runs, it applies exactly those and says the database is up to date
    migrated = cli(["migrate"], env=env, cwd=ROOT)
    output = assert_ok(migrated)
    applied = [line.split()[1] for line in output.splitlines() if line.startswith("applied")]
    assert sorted(applied) == sorted(before), output
    assert "is up to date" in output
    assert password not in migrated.output and "***" in output
    # Then status shows them applied, the tables exist, and a second run applies nothing
    assert set(status().values()) == {"applied"}
    with process_globals_restored():
        db = open_database(url)
        assert db.table_exists("messaging_outbox", schema="messaging")
        assert db.table_exists("warehouse_product_stock", schema="warehouse")
        db.close()
    again = assert_ok(cli(["migrate"], env=env, cwd=ROOT))
    assert not [line for line in again.splitlines() if line.startswith("applied")], again
    assert "is up to date" in again


# --- outbox status ---------------------------------------------------------------


def outbox_status(database: CliDatabase) -> tuple[int, float | None]:
    output = assert_ok(database.run("outbox", "status"))
    waiting = re.search(r"^waiting:\s+(\d+)$", output, re.M)
    oldest = re.search(r"^oldest:\s+(-|[\d.]+s)$", output, re.M)
    assert waiting and oldest, output
    age = None if oldest[1] == "-" else float(oldest[1].rstrip("s"))
    return int(waiting[1]), age


def test_outbox_status_shows_the_rows_waiting_and_the_age_of_the_oldest(cli_db, sku):
    with commands_on(cli_db):
        OutboxRecord.delete().execute()
    assert outbox_status(cli_db) == (0, None)
    # Given three commands and no drain running
    with commands_on(cli_db):
        increase_product_quantity(sku, 10)
        ship_product_quantity(sku, 3)
        increase_product_quantity(f"{sku}-b", 1)
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
        with commands_on(cli_db):
            OutboxRecord.delete().execute()


# --- dead letters -----------------------------------------------------------------


def dead_letter_then_held(ops: OpsInstallation, sku: str) -> tuple[DeadLetter, requests.Response]:
    """``picky`` dead-letters sku's first event (10) and holds its second (7)."""
    refuse(ops, "picky", sku)
    first = ops.increase(sku, 10)
    assert first.status_code == 200, first.text
    letter = wait_for_letter(ops, "picky", sku)
    assert ops.increase(sku, 7).status_code == 200
    wait_for_held(ops, "picky", sku, [2])
    return letter, first


def test_dead_letters_list_and_show_describe_what_the_workers_gave_up_on(ops, sku):
    letter, response = dead_letter_then_held(ops, sku)

    listed = assert_ok(ops.cli("dead-letters", "list"))
    rows = {line.split()[0]: line for line in listed.splitlines()[1:]}
    assert str(letter.id) in rows, listed
    row = rows[str(letter.id)].split()
    assert row[1:5] == ["picky", INCREASED, "v1", "2"], rows[str(letter.id)]
    assert f"RuntimeError: picky refuses SKU {sku}" in rows[str(letter.id)]
    assert listed.splitlines()[0].split() == ["ID", "LISTENER", "TYPE", "ATTEMPTS", "ERROR"]

    only_picky = assert_ok(ops.cli("dead-letters", "list", "--listener", "picky"))
    assert str(letter.id) in {line.split()[0] for line in only_picky.splitlines()[1:]}
    assert all(
        line.split()[1] == "picky" for line in only_picky.splitlines()[1:] if line.strip()
    ), only_picky
    nobody = assert_ok(ops.cli("dead-letters", "list", "--listener", unique_name("nobody")))
    assert nobody.strip() == "no dead letters"

    shown = json.loads(assert_ok(ops.cli("dead-letters", "show", str(letter.id))))
    message_id = response.json()["message_id"]
    assert shown["id"] == letter.id
    assert shown["listener"] == "picky"
    assert shown["message_id"] == message_id
    assert (shown["type"], shown["schema_version"]) == (INCREASED, 1)
    assert (shown["stream"], shown["position"]) == (sku, 1)
    assert shown["attempts"] == 2 and shown["poison"] is False
    assert shown["error"] == f"RuntimeError: picky refuses SKU {sku}"
    assert shown["created_at"]
    envelope = shown["envelope"]
    assert envelope["id"] == message_id
    assert envelope["correlation_id"] == response.headers["X-Request-ID"]
    payload = REGISTRY.decode(INCREASED, 1, base64.b64decode(envelope["payload"]))
    assert payload == {"sku": sku, "quantity": 10}


def test_replay_applies_a_fixed_letter_and_the_messages_held_behind_it(ops, sku):
    letter, _ = dead_letter_then_held(ops, sku)
    # While the cause remains, a replay fails again and keeps the letter
    failed = ops.cli("dead-letters", "replay", str(letter.id))
    assert failed.returncode == 1, failed.output
    assert f"{letter.id}: failed again, kept" in failed.stdout
    assert f"picky refuses SKU {sku}" in failed.stdout
    assert letter_of(ops, "picky", sku) is not None
    assert applied_quantities(ops, "picky", sku) == []
    # Once fixed, the replay applies it, and the held successor with it, in order
    accept(ops, "picky", sku)
    output = assert_ok(ops.cli("dead-letters", "replay", str(letter.id)))
    assert output.strip() == f"{letter.id}: applied"
    assert letter_of(ops, "picky", sku) is None
    assert applied_quantities(ops, "picky", sku) == [10, 7]
    assert held_positions(ops, "picky", sku) == []
    assert applied_position(ops, "picky", sku) == 2
    # Later messages flow normally again
    assert ops.ship(sku, 2).status_code == 200
    assert_eventually(lambda: _equal(applied_quantities(ops, "picky", sku), [10, 7, 2]))


def _equal(actual, expected) -> None:
    assert actual == expected


def test_replay_all_of_one_listener_leaves_the_other_listeners_letters(ops, sku):
    first, second, other = f"{sku}-a", f"{sku}-b", f"{sku}-c"
    refuse(ops, "picky_all", first)
    refuse(ops, "picky_all", second)
    refuse(ops, "picky_other", other)
    for each in (first, second, other):
        assert ops.increase(each, 9).status_code == 200
    letters = [
        wait_for_letter(ops, "picky_all", first),
        wait_for_letter(ops, "picky_all", second),
    ]
    kept = wait_for_letter(ops, "picky_other", other)
    for listener, each in (("picky_all", first), ("picky_all", second), ("picky_other", other)):
        accept(ops, listener, each)

    output = assert_ok(ops.cli("dead-letters", "replay", "--all", "--listener", "picky_all"))
    assert sorted(output.split("\n")[:-1]) == sorted(f"{x.id}: applied" for x in letters), output
    assert letter_of(ops, "picky_all", first) is None
    assert letter_of(ops, "picky_all", second) is None
    assert applied_quantities(ops, "picky_all", first) == [9]
    assert applied_quantities(ops, "picky_all", second) == [9]
    # picky_other's letter is untouched
    assert letter_of(ops, "picky_other", other) is not None
    assert applied_quantities(ops, "picky_other", other) == []
    listed = assert_ok(ops.cli("dead-letters", "list", "--listener", "picky_other"))
    assert str(kept.id) in {line.split()[0] for line in listed.splitlines()[1:]}
    # --all replays nothing of a listener without letters; an id or --all is required
    assert assert_ok(ops.cli("dead-letters", "replay", "--all", "--listener", "picky_all")) == ""
    usage = ops.cli("dead-letters", "replay")
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_discard_moves_the_listener_past_the_letter_and_releases_the_held_messages(ops, sku):
    letter, _ = dead_letter_then_held(ops, sku)
    accept(ops, "picky", sku)
    output = assert_ok(ops.cli("dead-letters", "discard", str(letter.id)))
    assert output.strip() == f"{letter.id}: discarded"
    assert letter_of(ops, "picky", sku) is None
    # The workers' sweep sends the held successor back through the broker: it is
    # applied, and the discarded message never is.
    assert_eventually(lambda: _equal(applied_quantities(ops, "picky", sku), [7]))
    assert_eventually(lambda: _equal(applied_position(ops, "picky", sku), 2))
    assert held_positions(ops, "picky", sku) == []


@pytest.mark.parametrize(
    "command", [("show",), ("replay",), ("discard",)], ids=["show", "replay", "discard"]
)
def test_an_unknown_dead_letter_id_is_refused_with_a_clear_message(ops, command):
    missing = "987654321"
    finished = ops.cli("dead-letters", *command, missing)
    assert finished.returncode != 0, finished.output
    assert finished.stderr.strip() == f"cqrs-warehouse: no dead letter {missing}"
    assert finished.stdout == ""
    not_a_number = ops.cli("dead-letters", *command, "abc")
    assert not_a_number.returncode == 2 and "invalid int value" in not_a_number.stderr


# --- routes ------------------------------------------------------------------------


def repo_env() -> dict[str, str]:
    """The environment of an operator in the project folder, on its own config."""
    env = ops_env()
    env.pop("SCHEMAS_DIR", None)
    return env


def test_routes_explain_names_each_listener_that_receives_a_key_and_its_binding():
    output = assert_ok(cli(["routes", "explain", f"{SHIPPED}.v1"], env=repo_env(), cwd=ROOT))
    lines = output.splitlines()
    assert len(lines) == len(project_listeners()), output
    for line in (
        "products_view: receives (binding 'Warehouse.Events.#')",
        "low_product_quantity_notifier: receives (binding 'Warehouse.Events.#')",
        "archive: receives (binding '#')",
    ):
        assert line in lines, output


def test_routes_explain_says_when_nobody_receives_a_key(tmp_path):
    config = write_listeners_config(
        tmp_path / "listeners.yaml", [project_listeners()[0], picky_listener("picky")]
    )
    env = ops_env(LISTENERS_CONFIG=str(config))
    shipped = assert_ok(cli(["routes", "explain", f"{SHIPPED}.v1"], env=env, cwd=ROOT))
    assert shipped.splitlines() == [
        "products_view: receives (binding 'Warehouse.Events.#')",
        "picky: receives (binding 'Warehouse.Events.ProductQuantityShipped.*')",
    ]
    key = "Billing.Events.InvoicePaid.v1"
    nobody = cli(["routes", "explain", key], env=env, cwd=ROOT)
    assert nobody.stdout.splitlines() == [
        "products_view: does not receive",
        "picky: does not receive",
        f"no listener receives {key}",
    ]


def test_routes_lint_is_clean_on_the_projects_configuration():
    output = assert_ok(cli(["routes", "lint"], env=repo_env(), cwd=ROOT))
    events = len(list(SCHEMAS.rglob("*.avsc")))
    assert output.strip() == (
        f"{events} events, {len(project_listeners())} listeners: every event is received "
        "and every binding matches an event"
    )


def test_routes_lint_lists_unreceived_events_and_bindings_matching_nothing(tmp_path):
    schemas = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, schemas)
    counted = schemas / "Inventory" / "Events" / "StockCounted_v1.avsc"
    counted.parent.mkdir(parents=True)
    counted.write_text(
        json.dumps(
            {
                "type": "record",
                "name": "StockCounted",
                "namespace": "Inventory.Events",
                "fields": [{"name": "sku", "type": "string"}],
            }
        )
    )
    billing = {
        "name": "billing",
        "handler": "cqrs_warehouse.messaging.testing:watch",
        "bindings": ["Billing.Events.#"],
    }
    config = write_listeners_config(
        tmp_path / "listeners.yaml", [*project_listeners()[:2], billing]
    )
    env = ops_env(LISTENERS_CONFIG=str(config), SCHEMAS_DIR=str(schemas))
    finished = cli(["routes", "lint"], env=env, cwd=ROOT)
    assert finished.returncode == 1, finished.output
    assert finished.stdout.splitlines() == [
        "event received by no listener: Inventory.Events.StockCounted.v1",
        f"binding matching no event in {schemas}: billing: 'Billing.Events.#'",
    ]


# --- rebuild ---------------------------------------------------------------------------


def test_rebuild_of_the_products_view_from_the_archive_gives_the_same_view(ops, sku):
    skus = [f"{sku}-{n}" for n in range(3)]
    for n, each in enumerate(skus):
        for quantity in (20 + n, 3, 4):
            assert ops.increase(each, quantity).status_code == 200
        assert ops.ship(each, 5 + n).status_code == 200
    before = ops.wait_until_view_matches_commands()
    assert {s: before[s] for s in skus} == dict.fromkeys(skus, 22)

    # Live traffic on another SKU goes on during the rebuild
    live = f"{sku}-live"
    accepted: list[int] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set() and len(accepted) < 40:
            if ops.increase(live, 1).status_code == 200:
                accepted.append(1)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        output = assert_ok(ops.cli("rebuild", "products_view", "--catch-up-timeout", "30"))
    finally:
        done.set()
        thread.join(timeout=30)
    report = re.fullmatch(
        r"rebuilt products_view: (\d+) archived messages replayed, (\d+) applied, "
        r"(\d+) skipped, 0 dead-lettered",
        output.strip(),
    )
    assert report, output
    assert int(report[2]) >= len(skus) * 4

    after = ops.wait_until_view_matches_commands()
    assert {s: after[s] for s in before} == before
    assert after[live] == len(accepted) > 0


def test_rebuild_refuses_a_listener_without_reset(ops, sku):
    assert ops.increase(sku, 2).status_code == 200
    ops.wait_until_view_matches_commands()
    ops.bind()
    Position = listener_state.StreamPosition
    notifier = Position.listener == "low_product_quantity_notifier"
    before = Position.select().where(notifier).count()
    assert before > 0

    finished = ops.cli("rebuild", "low_product_quantity_notifier")
    assert finished.returncode == 2, finished.output
    assert "declares no 'reset'" in finished.stderr
    assert "low_product_quantity_notifier" in finished.stderr
    ops.bind()
    assert Position.select().where(notifier).count() == before


def test_rebuild_refuses_an_unknown_listener(ops):
    name = unique_name("nobody")
    finished = ops.cli("rebuild", name)
    assert finished.returncode == 2, finished.output
    assert f"no listener '{name}'" in finished.stderr


# --- archive prune -------------------------------------------------------------------------


def test_archive_prune_drops_only_messages_older_than_the_given_days(cli_db, sku):
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with commands_on(cli_db):
        ArchivedMessage.delete().execute()
        for n, age in enumerate((10, 6, 1)):
            ArchivedMessage.create(
                message_id=unique_name("m"),
                type=INCREASED,
                schema_version=1,
                payload=REGISTRY.encode(INCREASED, 1, {"sku": sku, "quantity": n + 1}),
                stream=sku,
                position=n + 1,
                archived_at=now - datetime.timedelta(days=age),
            )
    output = assert_ok(cli_db.run("archive", "prune", "--older-than", "5"))
    assert output.strip() == "pruned 2 archived messages older than 5 days"
    with commands_on(cli_db):
        assert [m.position for m in ArchivedMessage.select()] == [3]
    assert assert_ok(cli_db.run("archive", "prune", "--older-than", "5")).startswith("pruned 0")
    missing = cli_db.run("archive", "prune")
    assert missing.returncode == 2 and "--older-than" in missing.stderr


@pytest.mark.parametrize("days", ["-1", "nan", "inf"])
def test_archive_prune_refuses_a_negative_or_infinite_age(cli_db, sku, days):
    # A negative age would be a cut-off in the future: it would drop the whole archive.
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    with commands_on(cli_db):
        ArchivedMessage.delete().execute()
        ArchivedMessage.create(
            message_id=unique_name("m"),
            type=INCREASED,
            schema_version=1,
            payload=REGISTRY.encode(INCREASED, 1, {"sku": sku, "quantity": 1}),
            stream=sku,
            position=1,
            archived_at=now,
        )
    finished = cli_db.run("archive", "prune", "--older-than", days)
    assert finished.returncode == 2, finished.output
    assert "--older-than" in finished.stderr and "Traceback" not in finished.stderr
    with commands_on(cli_db):
        assert ArchivedMessage.select().count() == 1
