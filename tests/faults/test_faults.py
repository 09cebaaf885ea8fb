"""Fault injection against the real processes: gunicorn and `dramatiq
cqrs_warehouse.worker -p 2 -t 4` over PostgreSQL and RabbitMQ, loaded through
the REST API by concurrent clients while a fault is injected. Every case ends
with the same checks (tests/faults/checks.py) and adds a row to the report
printed at the end of the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.listener_state import ProcessedMessage, StreamPosition
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.messaging.schemas import SchemaRegistry
from cqrs_warehouse.messaging.testing import WatchedMessage, eventually
from cqrs_warehouse.settings import DEFAULT_DATABASE_URL
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.processors.low_quantity import NotifierProduct
from tests.conftest import ROOT, SCHEMAS, unique_name
from tests.e2e.harness import (
    BIN,
    Service,
    free_port,
    project_listeners,
    service_env,
    wait_for_exit,
    wait_for_http,
)
from tests.faults.checks import (
    INCREASED,
    NOTIFIED,
    SHIPPED,
    assert_converged,
    fill_outcomes,
    read_state,
)
from tests.faults.conftest import StartInstallation
from tests.faults.injection import Publisher, copy_of, poison, record_from_archive
from tests.faults.installation import (
    FaultInstallation,
    LockedRows,
    lock_waits,
    pid_of_local_port,
    wait_for,
)
from tests.faults.load import INSUFFICIENT, Client, Command, Load, plan
from tests.faults.report import CaseReport
from tests.faults.services import (
    close_all_rabbitmq_connections,
    start_postgres,
    start_rabbitmq_app,
    stop_postgres_immediately,
    stop_rabbitmq_app,
)

pytestmark = pytest.mark.faults

CaseReportFactory = Callable[[str, str], CaseReport]
SQLITE_FILE = DEFAULT_DATABASE_URL.removeprefix("sqlite:///")

COMMANDS = 240
CLIENTS = 6
PAUSE = 0.02


def skus_for(case: str, count: int = 4) -> list[str]:
    base = unique_name(case)
    return [f"{base}-{i}" for i in range(count)]


def finish(
    installation: FaultInstallation,
    report: CaseReport,
    client: Client,
    skus: list[str],
    *,
    expected_dead_letters: set[tuple[str, str]] | None = None,
    at_least: dict[str, int] | None = None,
) -> None:
    """The common ending: wait for convergence, check everything, fill the report.

    ``at_least`` names listener outcomes (cqrs_listener_messages_total), or sums of
    them ("duplicate+held"), that must reach a count, e.g. the copies a case injected.
    """
    report.commands = client.outcomes()
    _, verdict = assert_converged(
        installation.bind(),
        skus=skus,
        attempts=client.snapshot(),
        listeners=installation.listener_names,
        expected_dead_letters=expected_dead_letters,
        report=report,
    )

    # Copies that change nothing may still wait in the queues: let them go through,
    # so the report counts every delivery.
    def drained() -> None:
        backlog = installation.queue_backlog()
        assert not any(backlog.values()), backlog

    eventually(drained, timeout=60, interval=0.2)

    def counted() -> dict[str, int]:
        outcomes = installation.listener_outcomes()
        # Counters are bumped just after each listener transaction commits.
        assert sum(outcomes.values()) >= verdict.distinct_deliveries, outcomes
        for names, count in (at_least or {}).items():
            seen = sum(outcomes.get(name, 0) for name in names.split("+"))
            assert seen >= count, f"{names}: {seen} < {count} ({outcomes})"
        return outcomes

    outcomes = eventually(counted, timeout=30, interval=0.2)
    fill_outcomes(report, outcomes, verdict.distinct_deliveries)
    report.published = installation.published_total()
    assert_load_exercised(report)


def assert_load_exercised(report: CaseReport) -> None:
    """The load did what it is for: some shipments were refused, some notified."""
    assert report.commands["refused"] > 0, report.commands
    assert report.notifications > 0, report


def start_load(
    installation: FaultInstallation, skus: list[str], *, seed: int, **client_options: object
) -> tuple[Client, Load]:
    client = Client(installation.base_url, **client_options)  # type: ignore[arg-type]
    load = Load(client, plan(skus, COMMANDS, seed=seed), clients=CLIENTS, pause=PAUSE).start()
    return client, load


def wait_for_part_of(load: Load, fraction: float = 1 / 3) -> None:
    wanted = int(len(load.commands) * fraction)
    wait_for(lambda: load.done >= wanted or bool(load.failures), f"{wanted} commands sent")


# --- 1. SIGKILL of a worker process -------------------------------------------------


def waiting_on(installation: FaultInstallation, table: str) -> list[int]:
    """Client ports of the database sessions waiting for a lock on ``table``."""
    return [port for port, query in lock_waits(installation) if table in query]


def test_sigkill_of_a_worker_process_in_the_middle_of_a_message_loses_nothing(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "worker SIGKILL",
        "SIGKILL, under load, to the dramatiq worker process whose notifier transaction is "
        "half done (held on a row lock the test takes); dramatiq then stops the other "
        "process, and is started again",
    )
    installation = start_installation("worker_kill")
    skus = skus_for("wk")
    blocked = unique_name("wk-blocked")
    client = Client(installation.base_url)
    assert client.send(Command(blocked, "increase", 20)).status == 200
    db = installation.bind()

    def notifier_has_it() -> None:
        with db.connection_context():
            assert NotifierProduct.get_or_none(NotifierProduct.sku == blocked) is not None

    eventually(notifier_has_it, timeout=30)
    load = Load(client, plan(skus, COMMANDS, seed=1), clients=CLIENTS, pause=PAUSE).start()
    try:
        wait_for_part_of(load)
        row = NotifierProduct.select().where(NotifierProduct.sku == blocked)
        with LockedRows(installation, row):
            # Leaves 4: the notifier's transaction for it stops at the locked row.
            assert client.send(Command(blocked, "ship", 16)).status == 200
            table = NotifierProduct._meta.table_name
            wait_for(lambda: bool(waiting_on(installation, table)), "the notifier to wait")
            port = waiting_on(installation, table)[0]
            pid = pid_of_local_port(port, installation.worker_pids())
            assert pid is not None, f"no worker process holds the session on port {port}"
            os.kill(pid, signal.SIGKILL)
        code = installation.wait_for_workers_to_exit()
        report.notes.append(
            f"killed worker process {pid} in the middle of the notifier's transaction; "
            f"dramatiq exited with {code}"
        )
        installation.start_workers()
    finally:
        load.join()
    finish(installation, report, client, [*skus, blocked])
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- 2. SIGKILL of the drain between publish and delete -----------------------------


def test_sigkill_of_the_drain_between_publish_and_delete_publishes_the_batch_again(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "drain SIGKILL after publish",
        "a worker process SIGKILLs itself after its 3rd confirmed batch, before deleting "
        "the rows (CQRS_FAULT_KILL_AFTER_PUBLISH=3, the drain's test-only hook); dramatiq is "
        "started again without the hook",
    )
    installation = start_installation(
        "drain_kill", worker_env={"CQRS_FAULT_KILL_AFTER_PUBLISH": "3"}
    )
    skus = skus_for("dk")
    client, load = start_load(installation, skus, seed=2)
    try:
        code = installation.wait_for_workers_to_exit()
        output = installation.worker_logs()
        assert "exited unexpectedly (code -9)" in output, output[-5000:]
        report.notes.append(f"the hook killed a worker process; dramatiq exited with {code}")
        installation.start_workers()
    finally:
        load.join()
    finish(installation, report, client, skus)
    assert set(report.commands) <= {"accepted", "refused"}, report.commands
    # The killed batch was published twice: every listener saw its messages again.
    assert report.deduplicated >= len(installation.listener_names), report


# --- 3. RabbitMQ restart under load --------------------------------------------------


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


# --- 4. every broker connection closed ----------------------------------------------


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


# --- 5. PostgreSQL restart -----------------------------------------------------------


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
    try:
        wait_for_part_of(load)
        # A command in the middle of its transaction when PostgreSQL goes: it waits on
        # the SKU's row, which the test holds locked.
        with LockedRows(installation, ProductStock.select().where(ProductStock.sku == blocked)):
            in_flight.start()
            table = ProductStock._meta.table_name
            wait_for(lambda: bool(waiting_on(installation, table)), "the command to wait")
            stop_postgres_immediately()
        unavailable = client.statuses()[503]
        wait_for(
            lambda: client.statuses()[503] >= unavailable + 5 or load.done == len(load.commands),
            "503s while PostgreSQL is down",
        )
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


# --- 6. duplicated and reordered deliveries -------------------------------------------


def test_duplicated_and_reordered_deliveries_are_applied_once_in_stream_order(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "duplicates + reordering",
        "copies of delivered messages published again (to the exchange, and straight to the "
        "view's and the notifier's queues in reverse order); one SKU's events published in "
        "reverse order while its outbox rows are held back from the drain",
    )
    installation = start_installation("dup_reorder")
    db = installation.bind()
    skus = skus_for("dr", 3)
    reversed_sku = unique_name("dr-rev")
    client = Client(installation.base_url)
    Load(client, plan(skus, 120, seed=6), clients=CLIENTS).start().join()
    assert_converged(
        db, skus=skus, attempts=client.snapshot(), listeners=installation.listener_names
    )

    # Copies of every message already delivered about these SKUs, notifications included.
    with db.connection_context():
        delivered = [
            record_from_archive(row)
            for row in ArchivedMessage.select().order_by(ArchivedMessage.id)
            if row.stream in skus or (row.type == NOTIFIED and row.stream is None)
        ]
    first_sku = [r for r in delivered if r.stream == skus[0]]
    second_sku = [r for r in delivered if r.stream == skus[1]]
    with Publisher(installation.exchange) as publisher:
        publisher.records(delivered)
        publisher.records(reversed(first_sku), queue=installation.queue("products_view"))
        publisher.records(
            reversed(second_sku), queue=installation.queue("low_product_quantity_notifier")
        )
        injected = publisher.sent
    expected_duplicates = (
        len(delivered) * len(installation.listener_names) + len(first_sku) + len(second_sku)
    )

    # One SKU's events, published in reverse order before the drain publishes them.
    installation.stop_workers_gracefully()
    for action, quantity in (
        ("increase", 10),
        ("ship", 4),
        ("ship", 2),
        ("increase", 3),
        ("ship", 3),
        ("ship", 4),
    ):
        attempt = client.send(Command(reversed_sku, action, quantity))
        assert attempt.status == 200, attempt.body
    listeners = installation.listener_names
    rows = (
        OutboxRecord.select()
        .where(OutboxRecord.stream == reversed_sku)
        .order_by(OutboxRecord.position)
    )
    # The drain claims with SKIP LOCKED: it publishes everything but these rows meanwhile.
    with LockedRows(installation, rows) as locked:
        events = [copy_of(row) for row in locked.rows]
        assert [r.position for r in events] == [1, 2, 3, 4, 5, 6]
        installation.start_workers()
        later = events[1:]
        with Publisher(installation.exchange) as publisher:
            publisher.records([later[-1], *reversed(later)])  # the last one twice
            injected += publisher.sent

        def all_held() -> None:
            state = read_state(db)
            held = sorted((name, p) for name, s, p in state.held if s == reversed_sku)
            assert held == sorted((name, p) for name in listeners for p in range(2, 7)), held

        eventually(all_held, timeout=60, interval=0.1)
        # The rest of the load goes on meanwhile; then the drain gets the rows.
        load = Load(client, plan(skus, 60, seed=66), clients=CLIENTS, pause=PAUSE).start()
    load.join()
    # Each listener holds the 6 reversed copies, then gets the drain's 1 to 6: the 1 is
    # applied with everything held, and each of 2 to 6 is a duplicate, or held again and
    # dropped if it came in before the 1 was applied.
    reversed_and_drained = (len(later) + 1 + len(later)) * len(listeners)

    report.injected = injected
    finish(
        installation,
        report,
        client,
        [*skus, reversed_sku],
        at_least={
            "duplicate": expected_duplicates,
            "duplicate+held": expected_duplicates + reversed_and_drained,
        },
    )

    # Each message keeps its own correlation id (the request's X-Request-ID) wherever it
    # goes, the archive included, and a notification carries its shipment's: the
    # shipments of 2, 3 and 4 left the SKU at 4, 4 and 0.
    state = read_state(db)
    mine = [a for a in client.snapshot() if a.command.sku == reversed_sku]
    request_of = {a.body["message_id"]: a.request_id for a in mine}
    wrong = [
        (e.position, e.correlation_id, request_of.get(e.message_id))
        for e in state.events
        if e.stream == reversed_sku and e.correlation_id != request_of.get(e.message_id)
    ]
    notified = sorted(
        str(e.correlation_id)
        for e in state.events
        if e.type == NOTIFIED and e.payload["sku"] == reversed_sku
    )
    low_shipments = sorted(a.request_id for a in mine[2:3] + mine[4:6])
    report.notes.append(
        f"{reversed_sku}: {len(wrong)} of its 6 events archived with another request's "
        f"correlation id; notifications carry {notified}, its low shipments are {low_shipments}"
    )
    assert not wrong and notified == low_shipments, (
        "messages applied after being held (and what their handlers emit) take the "
        "correlation id of the message that released them, not their own: (position, "
        f"archived, own) {wrong}; notifications {notified} != shipments {low_shipments}"
    )


# --- 7. poison messages --------------------------------------------------------------


def test_poison_messages_are_dead_lettered_at_once_and_block_no_other_sku(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "poison messages",
        "published to the exchange under load: undecodable Avro, unknown type, unknown "
        "version, another schema's payload, bytes after the record, invalid UTF-8, a bad "
        "stream position, and undecodable ones claiming a stream (their own, and a loaded "
        "SKU's)",
    )
    installation = start_installation("poison")
    skus = skus_for("po")
    registry = SchemaRegistry(SCHEMAS)
    good = registry.encode(INCREASED, 1, {"sku": skus[0], "quantity": 3})
    other = registry.encode(NOTIFIED, 1, {"sku": skus[0]})
    own_stream = unique_name("po-own")
    poisons = [
        poison("undecodable Avro", message_type=INCREASED, version=1, body=b"\xff" * 11),
        poison("unknown type", message_type=f"{INCREASED}Twice", version=1, body=good),
        poison("unknown version", message_type=INCREASED, version=99, body=good),
        poison("another schema's payload", message_type=SHIPPED, version=1, body=other),
        poison("bytes after the record", message_type=INCREASED, version=1, body=good + b"\0"),
        poison("invalid UTF-8", message_type=INCREASED, version=1, body=b"\x04\xff\xfe\x06"),
        poison(
            "position 0", message_type=SHIPPED, version=1, body=good, stream=skus[1], position=0
        ),
        poison(
            "undecodable, own stream",
            message_type=SHIPPED,
            version=1,
            body=b"\x80",
            stream=own_stream,
            position=1,
        ),
        poison(
            "undecodable, a loaded SKU's stream",
            message_type=INCREASED,
            version=1,
            body=b"\x80",
            stream=skus[2],
            position=3,
        ),
    ]
    client, load = start_load(installation, skus, seed=7)
    try:
        wait_for_part_of(load)
        with Publisher(installation.exchange) as publisher:
            report.injected = publisher.poison(poisons)
    finally:
        load.join()
    listeners = installation.listener_names
    expected = {(listener, p.message_id) for listener in listeners for p in poisons}
    finish(installation, report, client, skus, expected_dead_letters=expected)

    db = installation.bind()
    ids = {p.message_id for p in poisons}
    with db.connection_context():
        letters = list(DeadLetter.select().where(DeadLetter.message_id.in_(ids)))
        assert {(d.poison, d.attempts) for d in letters} == {(1, 1)}, [
            (d.listener, d.message_id, d.poison, d.attempts, d.error) for d in letters
        ]
        # None reached a handler: no listener recorded or applied any of them.
        assert not list(WatchedMessage.select().where(WatchedMessage.message_id.in_(ids)))
        assert not list(ArchivedMessage.select().where(ArchivedMessage.message_id.in_(ids)))
        assert not list(ProcessedMessage.select().where(ProcessedMessage.message_id.in_(ids)))
        assert not list(
            StreamPosition.select().where(
                (StreamPosition.stream == own_stream) & (StreamPosition.position > 0)
            )
        )
    report.notes.append(f"{len(letters)} dead letters, poison=1 and attempts=1 each")


# --- 8. 200 concurrent shipments against 100 on hand -------------------------------------


def test_200_concurrent_shipments_of_1_against_100_on_hand_sell_exactly_100(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "200 shipments vs 100 on hand",
        "200 concurrent requests shipping 1 each against 100 on hand, through gunicorn with "
        "3 worker processes of 4 threads",
    )
    installation = start_installation("oversell", web_workers=3)
    sku = unique_name("oversell")
    client = Client(installation.base_url, timeout=60)
    assert client.send(Command(sku, "increase", 100)).status == 200
    start = threading.Barrier(200)

    def ship() -> None:
        start.wait(60)
        client.send(Command(sku, "ship", 1))

    threads = [threading.Thread(target=ship) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    shipments = [a for a in client.snapshot() if a.command.action == "ship"]
    assert len(shipments) == 200
    outcomes = Counter(a.status for a in shipments)
    assert outcomes == {200: 100, 400: 100}, outcomes
    titles = Counter(a.body.get("title") for a in shipments if a.status == 400)
    assert titles == {INSUFFICIENT: 100}, titles
    finish(installation, report, client, [sku])
    with installation.bind().connection_context():
        assert ProductStock.get_by_id(sku).quantity == 0
    assert report.notifications == 6  # at 5, 4, 3, 2, 1 and 0


# --- 9. SIGTERM to the workers under load --------------------------------------------------


def test_sigterm_to_the_workers_under_load_loses_nothing(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "worker SIGTERM",
        "SIGTERM to dramatiq's main process under load (graceful shutdown), started again",
    )
    installation = start_installation("worker_term")
    skus = skus_for("wt")
    client, load = start_load(installation, skus, seed=9)
    try:
        wait_for_part_of(load)
        code = installation.stop_workers_gracefully()
        report.notes.append(f"dramatiq exited with {code} after SIGTERM")
        assert code == 0, installation.worker_logs()[-5000:]
        installation.start_workers()
    finally:
        load.join()
    finish(installation, report, client, skus)
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- 10. SIGKILL of `cqrs-warehouse serve` on the embedded default --------------------------

_OUTCOME_LINE = re.compile(r"^listener (\S+): (applied|duplicate|held|unbound|dead-lettered) ")
_RETRY_LINE = re.compile(r"^listener (\S+): (attempt \d+ of \d+ failed|database unavailable)")


def outcomes_from_logs(text: str) -> dict[str, int]:
    """Listener outcomes counted from JSON log lines (what a killed process can't lose)."""
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line).get("message", "")
        except ValueError:
            continue
        if match := _OUTCOME_LINE.match(message):
            totals[match.group(2).replace("-", "_")] += 1
        elif _RETRY_LINE.match(message):
            totals["retried"] += 1
    return dict(totals)


def test_sigkill_of_serve_on_the_embedded_default_loses_no_accepted_command(
    tmp_path: Path, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "serve SIGKILL (embedded)",
        "SIGKILL to `cqrs-warehouse serve` (SQLite file + in-process broker) under load, "
        "then serve started again in the same directory; clients retry lost requests",
    )
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = service_env(
        DATABASE_URL=None,
        BROKER_URL=None,
        QUEUE_PREFIX=None,
        LISTENERS_CONFIG=str(ROOT / "config" / "listeners.yaml"),
        SCHEMAS_DIR=str(SCHEMAS),
        LOG_FORMAT="json",
        CQRS_FAULT_KILL_AFTER_PUBLISH=None,
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    args = [str(BIN / "cqrs-warehouse"), "serve", "--bind", f"127.0.0.1:{port}"]
    services = [Service.start("serve-1", args, env=env, cwd=workdir, log_dir=tmp_path)]
    try:
        wait_for_http(f"{base_url}/warehouse/products", services)
        skus = skus_for("sv")
        client = Client(base_url, retry_lost=True, max_attempts=400, retry_pause=0.05)
        load = Load(client, plan(skus, COMMANDS, seed=10), clients=CLIENTS, pause=PAUSE).start()
        try:
            wait_for_part_of(load)
            os.killpg(services[0].process.pid, signal.SIGKILL)
            assert wait_for_exit(services[0], 30) == -signal.SIGKILL
            services.append(Service.start("serve-2", args, env=env, cwd=workdir, log_dir=tmp_path))
            wait_for_http(f"{base_url}/warehouse/products", services[1:])
        finally:
            load.join()
        report.commands = client.outcomes()
        db = open_database(f"sqlite:///{workdir / SQLITE_FILE}")
        try:
            listeners = [entry["name"] for entry in project_listeners()]
            _, verdict = assert_converged(
                db,
                skus=skus,
                attempts=client.snapshot(),
                listeners=listeners,
                source="archive",
                report=report,
            )

            def counted() -> dict[str, int]:
                outcomes = outcomes_from_logs("\n".join(s.output() for s in services))
                assert sum(outcomes.values()) >= verdict.distinct_deliveries, outcomes
                return outcomes

            try:
                outcomes = eventually(counted, timeout=10, interval=0.2)
            except AssertionError:
                outcomes = outcomes_from_logs("\n".join(s.output() for s in services))
            fill_outcomes(report, outcomes, verdict.distinct_deliveries)
            report.published = sum(
                1
                for s in services
                for line in s.output().splitlines()
                if '"message": "published ' in line
            )
            assert_load_exercised(report)
        finally:
            db.close()
        assert set(report.commands) <= {"accepted", "refused", "lost"}, report.commands
    except BaseException:
        # pytest shows this with the failure.
        for service in services:
            sys.stderr.write(f"----- {service.name}:\n{service.output()[-30_000:]}\n")
        raise
    finally:
        for service in services:
            service.terminate()
            service.kill_leftovers()
