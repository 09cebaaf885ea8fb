"""Changing listeners.yaml while commands keep coming (issue 17): a listener
added later and backfilled from the archive ends with the state of one that
was there all along; a reload of the workers (SIGHUP, dramatiq's) with a
changed file loses and duplicates nothing."""

from __future__ import annotations

import collections
import contextlib
import re
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.processes.conftest import logs_on_failure, picky_listener
from tests.processes.state import (
    INCREASED,
    SHIPPED,
    all_messages,
    wait,
    wait_until_view_matches_commands,
)
from tests.slices.recorders import PickyApplied
from tests.support import rabbitmqctl
from tests.support.installation import (
    EXCHANGE,
    SHIPMENT_RECORDER,
    WATCHER,
    Installation,
    project_listeners,
    write_listeners_config,
)

pytestmark = pytest.mark.processes


@contextlib.contextmanager
def traffic(installation: Installation, skus: list[str]) -> Iterator[collections.Counter]:
    """Increase then ship 1 of each SKU in turn, until the block ends; yields
    the count of accepted commands per SKU (each emits one event)."""
    accepted: collections.Counter = collections.Counter()
    done = threading.Event()

    def run() -> None:
        while not done.is_set():
            for each in skus:
                for command in (installation.increase, installation.ship):
                    if command(each, 1).status_code == 200:
                        accepted[each] += 1

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield accepted
    finally:
        done.set()
        thread.join(timeout=60)


def applied(installation: Installation, listener: str) -> dict[str, list[tuple[str, int]]]:
    """(message id, quantity) a picky listener applied, per SKU, in the order applied."""
    with installation.reading():
        query = PickyApplied.select().where(PickyApplied.listener == listener)
        found: dict[str, list[tuple[str, int]]] = {}
        for row in query.order_by(PickyApplied.id):
            found.setdefault(row.sku, []).append((row.message_id, int(row.quantity)))
        return found


def test_a_listener_added_later_and_backfilled_under_live_traffic_equals_one_there_all_along(
    request, postgres, tmp_path, rabbitmq, sku
):
    listeners = [*project_listeners(), picky_listener("picky")]
    installation = Installation.create(postgres, tmp_path, name="backfill", listeners=listeners)
    installation.listeners.append(picky_listener("picky_other"))  # its queues go at the end too
    skus = [f"{sku}-{n}" for n in range(4)]
    with logs_on_failure(request, installation):
        installation.start_workers(processes=2)
        installation.start_api(workers=1)
        for n, each in enumerate(skus):
            for quantity in (10 + n, 2):
                assert installation.increase(each, quantity).status_code == 200
            assert installation.ship(each, 3).status_code == 200
        wait_until_view_matches_commands(installation)

        with traffic(installation, [*skus, f"{sku}-new"]) as accepted:
            write_listeners_config(installation.workdir / "listeners.yaml", installation.listeners)
            installation.stop_workers()
            installation.start_workers(processes=2)
            finished = installation.cli("backfill", "picky_other", "--catch-up-timeout", "60")
            wait(lambda: sum(accepted.values()) > 40)  # commands went on after it too
        assert finished.returncode == 0, finished.output
        assert re.fullmatch(
            r"backfilled picky_other: \d+ archived messages replayed, \d+ applied, "
            r"\d+ skipped, 0 dead-lettered",
            finished.stdout.strip(),
        ), finished.output
        assert accepted[f"{sku}-new"] > 0 and all(accepted[each] > 0 for each in skus)

        wait_until_view_matches_commands(installation)

        def same_state() -> None:
            there_all_along, added_later = (
                applied(installation, "picky"),
                applied(installation, "picky_other"),
            )
            assert added_later == there_all_along
            for each in [*skus, f"{sku}-new"]:
                ids = [message_id for message_id, _ in added_later[each]]
                assert len(ids) == len(set(ids)) == 3 * (each in skus) + accepted[each]

        wait(same_state, timeout=60)


def test_a_reload_under_load_with_a_changed_file_loses_and_duplicates_nothing(
    request, postgres, tmp_path, rabbitmq, sku
):
    before = [*project_listeners(), WATCHER, picky_listener("picky")]
    installation = Installation.create(postgres, tmp_path, name="reload", listeners=before)
    prefix, exchange = installation.queue_prefix, f"{installation.queue_prefix}{EXCHANGE}"
    skus = [f"{sku}-{n}" for n in range(3)]
    with logs_on_failure(request, installation):
        workers = installation.start_workers(processes=2)
        installation.start_api(workers=1)
        old_pids = set(installation.worker_pids())
        with traffic(installation, skus) as accepted:
            wait(lambda: sum(accepted.values()) > 20)
            # The operator removes picky, adds the shipment recorder, and signals dramatiq.
            after = [*project_listeners(), WATCHER, SHIPMENT_RECORDER]
            write_listeners_config(installation.workdir / "listeners.yaml", after)
            installation.listeners.append(SHIPMENT_RECORDER)
            workers.process.send_signal(signal.SIGHUP)

            def reloaded() -> None:
                pids = set(installation.worker_pids())
                assert len(pids) == 2 and not pids & old_pids, (pids, old_pids)

            wait(reloaded, timeout=90)
            reached = sum(accepted.values())
            wait(lambda: sum(accepted.values()) > reached + 20)  # and commands go on

        state = wait_until_view_matches_commands(installation, timeout=60)
        assert all(state[each] == 0 for each in skus)  # every increase was shipped again

        def watched_once_each() -> None:
            every = [m for m in all_messages(installation) if m.payload["sku"] in skus]
            ids = collections.Counter(m.id for m in every)
            assert [i for i, n in ids.items() if n > 1] == []
            messages = [m for m in every if m.type in (INCREASED, SHIPPED)]
            per_sku = collections.Counter(m.payload["sku"] for m in messages)
            assert per_sku == {each: accepted[each] for each in skus}

        wait(watched_once_each)
        bound = rabbitmqctl.bindings(exchange)
        assert f"{prefix}picky" not in bound
        assert bound[f"{prefix}shipped_recorder"] == set(SHIPMENT_RECORDER["bindings"])
        assert workers.returncode() is None  # the same dramatiq, reloaded
