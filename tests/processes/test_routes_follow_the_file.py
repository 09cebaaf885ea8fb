"""The broker follows listeners.yaml (issue 17): editing the file and
restarting the workers removes the bindings it no longer says, a removed
listener's queue stops receiving and shows up as a leftover, and
``routes status``, ``lint`` and ``prune`` show and tidy the difference.
Checked against the broker's own truth (``rabbitmqctl``)."""

from __future__ import annotations

import re

import pika
import pytest

from tests.processes.conftest import logs_on_failure, picky_listener
from tests.processes.state import (
    INCREASED,
    SHIPPED,
    applied_quantities,
    received_by_shipment_recorder,
    wait,
    wait_until_view_matches_commands,
)
from tests.support import rabbitmqctl
from tests.support.installation import (
    EXCHANGE,
    SHIPMENT_RECORDER,
    WATCHER,
    Installation,
    project_listeners,
    write_listeners_config,
)
from tests.support.services import BROKER_URL

pytestmark = pytest.mark.processes

BOTH = [f"{INCREASED}.*", f"{SHIPPED}.*"]


def test_a_removed_listener_stops_receiving_and_a_narrowed_one_keeps_only_its_new_bindings(
    request, postgres, tmp_path, rabbitmq, sku
):
    recorder = {**SHIPMENT_RECORDER, "bindings": BOTH}
    before = [*project_listeners(), WATCHER, recorder, picky_listener("picky")]
    installation = Installation.create(postgres, tmp_path, name="routes", listeners=before)
    prefix, exchange = installation.queue_prefix, f"{installation.queue_prefix}{EXCHANGE}"
    with logs_on_failure(request, installation):
        installation.start_workers(processes=2)
        installation.start_api(workers=1)
        assert rabbitmqctl.bindings(exchange)[f"{prefix}shipped_recorder"] == set(BOTH)
        assert installation.increase(f"{sku}-1", 3).status_code == 200
        wait(lambda: applied_quantities(installation, "picky", f"{sku}-1") == [3])

        # The operator removes picky and narrows the recorder, then restarts the workers.
        installation.stop_workers()
        narrowed = {**recorder, "bindings": [f"{SHIPPED}.*"]}
        after = [*project_listeners(), WATCHER, narrowed]
        write_listeners_config(installation.workdir / "listeners.yaml", after)
        installation.start_workers(processes=2)

        bound = rabbitmqctl.bindings(exchange)
        assert f"{prefix}picky" not in bound, bound
        assert bound[f"{prefix}shipped_recorder"] == {f"{SHIPPED}.*"}
        assert bound[f"{prefix}products_view"] == {"Warehouse.Events.#"}
        assert installation.increase(f"{sku}-2", 7).status_code == 200
        assert installation.ship(f"{sku}-2", 2).status_code == 200
        wait_until_view_matches_commands(installation)
        wait(lambda: len(received_by_shipment_recorder(installation, f"{sku}-2")) == 1)
        [received] = received_by_shipment_recorder(installation, f"{sku}-2")
        assert (received.type, received.quantity) == (SHIPPED, 2)
        # picky's queue is kept, received nothing, and nobody consumes it
        assert rabbitmqctl.queues(f"{prefix}picky")[f"{prefix}picky"] == (0, 0)
        assert applied_quantities(installation, "picky", f"{sku}-2") == []

        status = installation.cli("routes", "status")
        assert status.returncode == 0, status.output
        lines = status.stdout.splitlines()
        assert re.fullmatch(
            rf"shipped_recorder: queue {re.escape(prefix)}shipped_recorder, 0 messages, "
            r"[12] consumers",
            next(line for line in lines if line.startswith("shipped_recorder:")),
        ), status.stdout
        recorder_at = lines.index(
            next(line for line in lines if line.startswith("shipped_recorder:"))
        )
        assert lines[recorder_at + 1 : recorder_at + 3] == [
            f"  bindings in the file:   '{SHIPPED}.*'",
            f"  bindings on the broker: '{SHIPPED}.*'",
        ]
        assert lines[-1] == f"  {prefix}picky (was listener picky): 0 messages, 0 consumers"

        lint = installation.cli("routes", "lint")
        assert lint.returncode == 1, lint.output
        assert f"warning: leftover queue {prefix}picky (was listener picky)" in lint.stdout

        installation.listeners.append(picky_listener("picky"))  # its queues go when it closes
        refused = installation.cli("routes", "prune", f"{prefix}products_view")
        assert refused.returncode == 2, refused.output
        assert "is the queue of listener products_view" in refused.stderr
        unknown = installation.cli("routes", "prune", f"{prefix}nobody")
        assert unknown.returncode == 2, unknown.output
        assert "not a leftover queue of this installation" in unknown.stderr

        pruned = installation.cli("routes", "prune", f"{prefix}picky")
        assert pruned.returncode == 0, pruned.output
        assert f"{prefix}picky" not in rabbitmqctl.queues(f"{prefix}picky")
        after_prune = installation.cli("routes", "status")
        assert after_prune.stdout.splitlines()[-1] == "  none", after_prune.stdout


def test_prune_refuses_a_leftover_queue_that_holds_messages_unless_forced(
    request, postgres, tmp_path, rabbitmq
):
    listeners = [*project_listeners(), picky_listener("picky")]
    installation = Installation.create(postgres, tmp_path, name="prune", listeners=listeners)
    prefix, queue = installation.queue_prefix, f"{installation.queue_prefix}picky"
    with logs_on_failure(request, installation):
        assert installation.cli("routes", "apply").returncode == 0
        write_listeners_config(installation.workdir / "listeners.yaml", project_listeners())
        applied = installation.cli("routes", "apply")
        assert applied.returncode == 0, applied.output
        assert f"unbound {queue} from {prefix}{EXCHANGE}: 'Warehouse.Events.ProductQuantity" in (
            applied.stdout
        )
        assert f"leftover queue {queue}: no listener owns it" in applied.stdout
        assert queue not in rabbitmqctl.bindings(f"{prefix}{EXCHANGE}")
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            connection.channel().basic_publish(exchange="", routing_key=queue, body=b"waiting")
        finally:
            connection.close()
        wait(lambda: rabbitmqctl.queues(queue)[queue][0] == 1)

        refused = installation.cli("routes", "prune", queue)
        assert refused.returncode == 2, refused.output
        assert "holds 1 messages" in refused.stderr and "nothing was deleted" in refused.stderr
        assert rabbitmqctl.queues(queue)[queue] == (1, 0)

        forced = installation.cli("routes", "prune", queue, "--force")
        assert forced.returncode == 0, forced.output
        assert forced.stdout.strip() == f"deleted {queue} and 1 messages with it"
        assert queue not in rabbitmqctl.queues(queue)


def test_renaming_a_listener_as_the_readme_says_keeps_its_view_and_loses_no_event(
    request, postgres, tmp_path, rabbitmq, sku
):
    """README, "Rename a listener": rename it in the file and restart the workers
    (the old queue becomes a leftover), ``rebuild NEW``, then ``routes prune OLD
    --force``; commands go on meanwhile."""
    installation = Installation.create(
        postgres, tmp_path, name="rename", listeners=project_listeners()
    )
    prefix, exchange = installation.queue_prefix, f"{installation.queue_prefix}{EXCHANGE}"
    old_queue, new_queue = f"{prefix}products_view", f"{prefix}stock_view"
    with logs_on_failure(request, installation):
        installation.start_workers(processes=2)
        installation.start_api(workers=1)
        assert installation.increase(f"{sku}-1", 9).status_code == 200
        assert installation.ship(f"{sku}-1", 2).status_code == 200
        wait_until_view_matches_commands(installation)

        installation.stop_workers()
        renamed = [
            {**entry, "name": "stock_view"} if entry["name"] == "products_view" else entry
            for entry in project_listeners()
        ]
        write_listeners_config(installation.workdir / "listeners.yaml", renamed)
        installation.start_workers(processes=2)
        bound = rabbitmqctl.bindings(exchange)
        assert old_queue not in bound, bound
        assert bound[new_queue] == {"Warehouse.Events.#"}
        # Before the rebuild: an event of a stream the old name applied waits
        # for its predecessors under the new name; one of a new stream applies.
        assert installation.increase(f"{sku}-1", 4).status_code == 200
        assert installation.increase(f"{sku}-2", 5).status_code == 200

        rebuilt = installation.cli("rebuild", "stock_view", "--catch-up-timeout", "30")
        assert rebuilt.returncode == 0, rebuilt.output
        state = wait_until_view_matches_commands(installation)
        assert (state[f"{sku}-1"], state[f"{sku}-2"]) == (11, 5)

        leftover = installation.cli("routes", "status").stdout.splitlines()[-1]
        assert leftover.startswith(f"  {old_queue} (was listener products_view): "), leftover
        pruned = installation.cli("routes", "prune", old_queue, "--force")
        assert pruned.returncode == 0, pruned.output
        assert old_queue not in rabbitmqctl.queues(old_queue)
        assert installation.ship(f"{sku}-1", 1).status_code == 200
        assert wait_until_view_matches_commands(installation)[f"{sku}-1"] == 10
        status = installation.cli("routes", "status")
        assert status.stdout.splitlines()[-1] == "  none", status.stdout
