"""Fault cases: the machine's RabbitMQ and PostgreSQL stopped, restarted or cutting
every connection under load (tests/faults/services.py).

They stop the services every other test on the machine uses: run them where
that is acceptable. Each ends with the same checks (tests/faults/checks.py)
and adds a row to the report.
"""

from __future__ import annotations

import threading
import time

import pytest

from cqrs_warehouse.warehouse.commands import ProductStock
from tests.faults.cases import (
    CLIENTS,
    COMMANDS,
    PAUSE,
    CaseReportFactory,
    finish,
    skus_for,
    start_load,
    wait_for_part_of,
)
from tests.faults.conftest import StartInstallation
from tests.faults.installation import LockedRows, waiting_on
from tests.faults.load import Client, Command, Load, plan
from tests.faults.services import (
    close_all_rabbitmq_connections,
    start_postgres,
    start_rabbitmq_app,
    stop_postgres_immediately,
    stop_rabbitmq_app,
)
from tests.support.services import unique_name
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults


# --- RabbitMQ restart under load --------------------------------------------------------


def test_a_rabbitmq_restart_under_load_loses_nothing_and_commands_go_on(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "RabbitMQ restart",
        "rabbitmqctl stop_app under load; 80 more commands sent while it is down; then "
        "start_app while the load goes on",
    )
    installation = start_installation("rabbit_restart")
    skus = skus_for("rr")
    commands = plan(skus, COMMANDS, seed=3)
    client = Client(installation.base_url)
    load = Load(client, commands[:-80], clients=CLIENTS, pause=PAUSE).start()
    try:
        wait_for_part_of(load)
        stop_rabbitmq_app()
        # Commands never talk to the broker: they are answered while it is down.
        while_down = Load(Client(installation.base_url), commands[-80:], clients=CLIENTS)
        while_down.start().join()
        assert set(while_down.client.outcomes()) <= {"accepted", "refused"}, (
            while_down.client.outcomes()
        )
        client.absorb(while_down.client)
        report.notes.append(
            f"answered while RabbitMQ was down: {dict(while_down.client.outcomes())}"
        )
    finally:
        start_rabbitmq_app()
        load.join()
    finish(installation, report, client, skus)
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- every broker connection closed ------------------------------------------------------


def test_closing_every_broker_connection_under_load_loses_nothing(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "broker connections closed",
        "rabbitmqctl close_all_connections under load, twice (after 1/3 and 2/3 of it)",
    )
    installation = start_installation("rabbit_close")
    skus = skus_for("rc")
    client, load = start_load(installation, skus, seed=4)
    try:
        wait_for_part_of(load, 1 / 3)
        close_all_rabbitmq_connections("fault suite: connections closed under load")
        wait_for_part_of(load, 2 / 3)
        close_all_rabbitmq_connections("fault suite: connections closed under load")
    finally:
        load.join()
    finish(installation, report, client, skus)
    forced = installation.worker_logs().count("CONNECTION_FORCED")
    report.notes.append(f"worker connections closed by the broker (CONNECTION_FORCED): {forced}")
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- PostgreSQL restart ------------------------------------------------------------------


def test_an_immediate_postgresql_restart_answers_503_and_loses_nothing(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "PostgreSQL restart",
        "pg_ctlcluster stop -m immediate under load, with a command in the middle of its "
        "transaction, held until the clients saw 503s, then start; clients retry a 503 "
        "(each retry a new request)",
    )
    installation = start_installation("pg_restart")
    skus = skus_for("pg")
    blocked = unique_name("pg-blocked")
    client, load = start_load(
        installation,
        skus,
        seed=5,
        retry_statuses=frozenset({503}),
        max_attempts=400,
        retry_pause=0.05,
    )
    assert client.send(Command(blocked, "increase", 10)).status == 200
    in_flight = threading.Thread(target=client.send, args=(Command(blocked, "ship", 3),))
    table = ProductStock._meta.table_name

    def command_waits() -> None:
        assert waiting_on(installation, table), f"no session waits for a lock on {table}"

    try:
        wait_for_part_of(load)
        # A command in the middle of its transaction when PostgreSQL goes: it waits on
        # the SKU's row, which the test holds locked.
        row = ProductStock.select().where(ProductStock.sku == blocked)
        with LockedRows(installation, row):
            in_flight.start()
            eventually(command_waits, timeout=60)
            stop_postgres_immediately()
        unavailable = client.statuses()[503]

        def answered_503() -> None:
            assert client.statuses()[503] >= unavailable + 5 or load.done == len(load.commands), (
                f"503s while PostgreSQL is down: {client.statuses()[503] - unavailable}"
            )

        eventually(answered_503, timeout=60)
    finally:
        start_postgres()
        back_at = time.monotonic()
        load.join()
        if in_flight.ident is not None:
            in_flight.join(60)
    skus.append(blocked)
    statuses = client.statuses()
    report.notes.append(f"statuses seen: {dict(sorted(statuses.items(), key=str))}")
    finish(installation, report, client, skus)
    # While the database is down the API answers 503 (never 500, never silence), and
    # once it is back every request is served again.
    assert statuses[503] > 0, statuses
    others = [a for a in client.snapshot() if a.status not in (200, 400, 503)]
    after = [a for a in others if a.sent_at > back_at]
    assert not others, (
        f"{len(others)} of {len(client.attempts)} attempts answered neither 200, 400 nor 503 "
        f"({len(after)} of them sent once PostgreSQL was back): {dict(statuses)}; the first: "
        f"{others[0].command} {others[0].status} {others[0].body!r}"
    )
