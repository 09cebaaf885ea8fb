"""Fault cases: the service's own processes killed or stopped under load (a worker
process SIGKILLed in the middle of a message, the drain crashing between
publish and delete, SIGTERM to the workers, SIGKILL of `cqrs-warehouse serve`).

Each runs the real processes (tests/faults/conftest.py), loads them through
the REST API from concurrent clients while the fault is injected, ends with
the same checks (tests/faults/checks.py) and adds a row to the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cqrs_warehouse.runtime import Runtime, build
from cqrs_warehouse.settings import DEFAULT_DATABASE_URL, DEFAULT_SLICES
from cqrs_warehouse.warehouse.processors.low_quantity import NotifierProduct
from tests.conftest import LISTENERS_CONFIG, settings_for
from tests.faults.cases import (
    CLIENTS,
    COMMANDS,
    PAUSE,
    CaseReportFactory,
    assert_load_exercised,
    finish,
    skus_for,
    start_load,
    wait_for_part_of,
)
from tests.faults.checks import assert_converged, fill_outcomes
from tests.faults.conftest import StartInstallation
from tests.faults.installation import LockedRows, pid_of_local_port, waiting_on
from tests.faults.load import Client, Command, Load, plan
from tests.support.environment import service_env
from tests.support.installation import project_listeners
from tests.support.processes import BIN, Service, free_port
from tests.support.services import unique_name
from tests.support.waiting import eventually, wait_for_http

pytestmark = pytest.mark.faults

SQLITE_FILE = DEFAULT_DATABASE_URL.removeprefix("sqlite:///")


# --- SIGKILL of a worker process ---------------------------------------------------


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

    def notifier_has_it() -> None:
        with installation.reading():
            assert NotifierProduct.get_or_none(NotifierProduct.sku == blocked) is not None

    eventually(notifier_has_it, timeout=30)
    table = NotifierProduct._meta.table_name

    def notifier_waits() -> int:
        ports = waiting_on(installation, table)
        assert ports, f"no session waits for a lock on {table}"
        return ports[0]

    load = Load(client, plan(skus, COMMANDS, seed=1), clients=CLIENTS, pause=PAUSE).start()
    try:
        wait_for_part_of(load)
        row = NotifierProduct.select().where(NotifierProduct.sku == blocked)
        with LockedRows(installation, row):
            # Leaves 4: the notifier's transaction for it stops at the locked row.
            assert client.send(Command(blocked, "ship", 16)).status == 200
            port = eventually(notifier_waits, timeout=60)
            pid = pid_of_local_port(port, installation.worker_pids())
            assert pid is not None, f"no worker process holds the session on port {port}"
            os.kill(pid, signal.SIGKILL)
        code = installation.wait_for_workers_to_exit()
        report.notes.append(
            f"killed worker process {pid} in the middle of the notifier's transaction; "
            f"dramatiq exited with {code}"
        )
        installation.start_fault_workers()
    finally:
        load.join()
    finish(installation, report, client, [*skus, blocked])
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- SIGKILL of the drain between publish and delete ---------------------------------


def test_sigkill_of_the_drain_between_publish_and_delete_publishes_the_batch_again(
    start_installation: StartInstallation, case_report: CaseReportFactory
) -> None:
    report = case_report(
        "drain SIGKILL after publish",
        "a worker process SIGKILLs itself after its 3rd confirmed batch, before deleting "
        "the rows (the suite's own worker module tests.faults.crashing_worker, "
        "FAULT_KILL_AFTER_PUBLISH=3); dramatiq is started again with the service's worker",
    )
    installation = start_installation(
        "drain_kill",
        worker_module="tests.faults.crashing_worker",
        worker_env={"FAULT_KILL_AFTER_PUBLISH": "3"},
    )
    skus = skus_for("dk")
    client, load = start_load(installation, skus, seed=2)
    try:
        code = installation.wait_for_workers_to_exit()
        output = installation.worker_logs()
        assert "exited unexpectedly (code -9)" in output, output[-5000:]
        report.notes.append(f"a worker process killed itself; dramatiq exited with {code}")
        installation.start_fault_workers()
    finally:
        load.join()
    finish(installation, report, client, skus)
    assert set(report.commands) <= {"accepted", "refused"}, report.commands
    # The killed batch was published twice: every listener saw its messages again.
    assert report.deduplicated >= len(installation.listener_names), report


# --- SIGTERM to the workers under load -------------------------------------------------


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
        code = installation.stop_workers()
        report.notes.append(f"dramatiq exited with {code} after SIGTERM")
        assert code == 0, installation.worker_logs()[-5000:]
        installation.start_fault_workers()
    finally:
        load.join()
    finish(installation, report, client, skus)
    assert set(report.commands) <= {"accepted", "refused"}, report.commands


# --- SIGKILL of `cqrs-warehouse serve` on the embedded default --------------------------

_OUTCOME_LINE = re.compile(r"^listener (\S+): (applied|duplicate|held|unbound|dead_lettered) ")
_PUBLISHED_LINE = re.compile(r'"message": "published [0-9a-f-]{36}"')
_RETRY_LINE = re.compile(r"^listener (\S+): (attempt \d+ of \d+ failed|database error)")


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
            totals[match.group(2)] += 1
        elif _RETRY_LINE.match(message):
            totals["retried"] += 1
    return dict(totals)


class ServedFiles:
    """The SQLite file `serve` keeps in its working directory, read in this process."""

    def __init__(self, workdir: Path) -> None:
        url = f"sqlite:///{workdir / SQLITE_FILE}"
        self.runtime = build(settings_for(url, slices=DEFAULT_SLICES), embedded=True)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Runtime]:
        self.runtime.bind_models()
        with self.runtime.database.connection_context():
            yield self.runtime


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
    # No DATABASE_URL, BROKER_URL nor SLICES: the embedded default.
    # LOG_LEVEL=DEBUG: the outcomes are counted from the lines about each message.
    env = service_env(
        {"LISTENERS_CONFIG": str(LISTENERS_CONFIG), "LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG"}
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
            services[0].signal_group(signal.SIGKILL)
            assert services[0].wait(30) == -signal.SIGKILL
            services.append(Service.start("serve-2", args, env=env, cwd=workdir, log_dir=tmp_path))
            wait_for_http(f"{base_url}/warehouse/products", services[1:])
        finally:
            load.join()
        report.commands = client.outcomes()
        served = ServedFiles(workdir)
        try:
            listeners = [entry["name"] for entry in project_listeners()]
            _, verdict = assert_converged(
                served,
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
                if _PUBLISHED_LINE.search(line)
            )
            assert_load_exercised(report)
        finally:
            served.runtime.database.close()
        assert set(report.commands) <= {"accepted", "refused", "lost"}, report.commands
    except BaseException:
        # pytest shows this with the failure.
        for service in services:
            sys.stderr.write(f"----- {service.name}:\n{service.output()[-30_000:]}\n")
        raise
    finally:
        for service in services:
            service.terminate()
