"""`cqrs-warehouse routes` (explain, lint) and `cqrs-warehouse rebuild`, run as
operators run them: on the project's configuration or one of a test's own,
and, for the rebuild, on the shared ``ops`` installation under live traffic."""

from __future__ import annotations

import json
import re
import shutil
import threading

import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.storage.models import StreamPosition
from tests.processes.conftest import logs_on_failure, picky_listener
from tests.processes.state import SHIPPED, wait_until_view_matches_commands
from tests.support.environment import SCHEMAS, service_env
from tests.support.installation import (
    WATCHER,
    Installation,
    project_listeners,
    write_listeners_config,
)
from tests.support.processes import BIN, ROOT, Finished, run_to_exit
from tests.support.services import unique_name
from tests.support.waiting import eventually

pytestmark = pytest.mark.processes


def cli(*args: str, env: dict[str, str]) -> Finished:
    """``cqrs-warehouse ARGS`` to its exit, run in the project's folder."""
    return run_to_exit([str(BIN / "cqrs-warehouse"), *args], env=env, cwd=ROOT)


def assert_ok(finished: Finished) -> str:
    """Its standard output, once it exited 0."""
    assert finished.returncode == 0, finished.output
    return finished.stdout


def repo_env() -> dict[str, str]:
    """The environment of an operator in the project folder, on its own config."""
    return service_env(SCHEMAS_DIR=None)


# --- routes ------------------------------------------------------------------------


def test_routes_explain_names_each_listener_that_receives_a_key_and_its_binding():
    output = assert_ok(cli("routes", "explain", f"{SHIPPED}.v1", env=repo_env()))
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
    env = service_env(LISTENERS_CONFIG=str(config))
    shipped = assert_ok(cli("routes", "explain", f"{SHIPPED}.v1", env=env))
    assert shipped.splitlines() == [
        "products_view: receives (binding 'Warehouse.Events.#')",
        "picky: receives (binding 'Warehouse.Events.ProductQuantityShipped.*')",
    ]
    key = "Billing.Events.InvoicePaid.v1"
    nobody = cli("routes", "explain", key, env=env)
    assert nobody.stdout.splitlines() == [
        "products_view: does not receive",
        "picky: does not receive",
        f"no listener receives {key}",
    ]


def test_routes_lint_is_clean_on_the_projects_configuration():
    output = assert_ok(cli("routes", "lint", env=repo_env()))
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
    billing = {**WATCHER, "name": "billing", "bindings": ["Billing.Events.#"]}
    config = write_listeners_config(
        tmp_path / "listeners.yaml", [*project_listeners()[:2], billing]
    )
    env = service_env(LISTENERS_CONFIG=str(config), SCHEMAS_DIR=str(schemas))
    finished = cli("routes", "lint", env=env)
    assert finished.returncode == 1, finished.output
    assert finished.stdout.splitlines() == [
        "event received by no listener: Inventory.Events.StockCounted.v1",
        f"binding matching no event in {schemas}: billing: 'Billing.Events.#'",
        f"error (the workers refuse to start): {config}: listeners[2] (billing): its bindings "
        "['Billing.Events.#'] match no known event type, so it would never receive anything "
        "(is a schema folder missing?)",
    ]


# --- rebuild ---------------------------------------------------------------------------


def test_rebuild_of_the_products_view_from_the_archive_gives_the_same_view(ops, sku):
    skus = [f"{sku}-{n}" for n in range(3)]
    for n, each in enumerate(skus):
        for quantity in (20 + n, 3, 4):
            assert ops.increase(each, quantity).status_code == 200
        assert ops.ship(each, 5 + n).status_code == 200
    before = wait_until_view_matches_commands(ops)
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

    after = wait_until_view_matches_commands(ops)
    assert {s: after[s] for s in before} == before
    assert after[live] == len(accepted) > 0


def notifier_positions(ops) -> int:
    with ops.reading():
        notifier = StreamPosition.listener == "low_product_quantity_notifier"
        return StreamPosition.select().where(notifier).count()


def test_rebuild_refuses_a_listener_without_reset(ops, sku):
    assert ops.increase(sku, 2).status_code == 200
    wait_until_view_matches_commands(ops)
    before = notifier_positions(ops)
    assert before > 0

    finished = ops.cli("rebuild", "low_product_quantity_notifier")
    assert finished.returncode == 2, finished.output
    assert "declares no reset" in finished.stderr
    assert "low_product_quantity_notifier" in finished.stderr
    assert notifier_positions(ops) == before


def test_rebuild_refuses_an_unknown_listener(ops):
    name = unique_name("nobody")
    finished = ops.cli("rebuild", name)
    assert finished.returncode == 2, finished.output
    assert f"no listener '{name}'" in finished.stderr


def test_rebuild_after_the_archive_was_pruned_refuses_and_keeps_the_view(
    request, postgres, tmp_path, rabbitmq, sku
):
    installation = Installation.create(postgres, tmp_path, name="pruned")
    with logs_on_failure(request, installation):
        installation.start_workers(processes=1)
        installation.start_api(workers=1)
        skus = [f"{sku}-{n}" for n in range(3)]
        for n, each in enumerate(skus):
            assert installation.increase(each, 5 + n).status_code == 200
        before = wait_until_view_matches_commands(installation)

        def archived() -> None:
            with installation.reading():
                assert ArchivedMessage.select().count() == len(skus)

        eventually(archived, timeout=30)
        assert_ok(installation.cli("archive", "prune", "--older-than", "0"))

        finished = installation.cli("rebuild", "products_view", "--catch-up-timeout", "5")
        assert finished.returncode == 2, finished.output
        assert "it was pruned" in finished.stderr
        assert "Nothing was changed." in finished.stderr
        assert wait_until_view_matches_commands(installation) == before
        assert {s: before[s] for s in skus} == {s: 5 + n for n, s in enumerate(skus)}
