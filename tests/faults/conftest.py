"""Fixtures of the fault suite, and its report at the end of the run.

Each test starts its own installation (database, queue prefix, processes) and
its own SKUs. Whatever happens, PostgreSQL and RabbitMQ are left running
after every test.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.faults.installation import FaultInstallation
from tests.faults.report import REPORTS, CaseReport, render
from tests.faults.services import ensure_services_running
from tests.support.cluster import Cluster, ClusterError
from tests.support.services import BROKER_URL, Postgres, ServiceMissing, require_rabbitmq

StartInstallation = Callable[..., FaultInstallation]


@pytest.fixture(autouse=True)
def _services_left_running() -> Iterator[None]:
    yield
    ensure_services_running()


@pytest.fixture
def start_installation(
    request: pytest.FixtureRequest, postgres: Postgres, tmp_path: Path
) -> Iterator[StartInstallation]:
    """``start_installation(name, web_workers=2, worker_module=..., worker_env={},
    broker_url=..., settings={})``: gunicorn and `dramatiq -p 2 -t 4` running on a
    new database and queue prefix, with the watcher bound to "#"; everything
    stopped and deleted afterwards."""
    with contextlib.ExitStack() as stack:

        def start(
            name: str,
            *,
            web_workers: int = 2,
            worker_module: str = "cqrs_warehouse.worker",
            worker_env: Mapping[str, str] = {},
            broker_url: str = BROKER_URL,
            settings: Mapping[str, str] = {},
        ) -> FaultInstallation:
            try:
                require_rabbitmq(broker_url)
            except ServiceMissing as error:
                pytest.fail(str(error))
            installation = FaultInstallation.create(
                postgres,
                tmp_path / name,
                name=f"fault_{name}",
                settings={"LOG_FORMAT": "json", **settings},
                broker_url=broker_url,
            )
            stack.callback(_close, request, installation, request.session.testsfailed)
            installation.start_api(workers=web_workers)
            installation.start_fault_workers(module=worker_module, env=worker_env)
            return installation

        yield start


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[Cluster]:
    """A 3-node RabbitMQ cluster beside the machine's RabbitMQ (tests/support/cluster.py),
    started once for the session (about 20 s on 2 cores) and stopped at its end."""
    try:
        cluster = Cluster.start()
    except ClusterError as error:
        pytest.fail(str(error))
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(rabbitmq_cluster: Cluster) -> Iterator[Cluster]:
    """The session's cluster, whole again after the test whatever it did to its nodes."""
    yield rabbitmq_cluster
    rabbitmq_cluster.ensure_whole()


def _close(request: pytest.FixtureRequest, installation: FaultInstallation, failed: int) -> None:
    try:
        ensure_services_running()
    finally:
        if request.session.testsfailed > failed:
            _print_logs(request, f"service logs of {installation!r}", installation.logs())
        installation.close()


def _print_logs(request: pytest.FixtureRequest, title: str, text: str) -> None:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        # The last part of each log is what tells the story; keep the output bounded.
        limit = 60_000
        if len(text) > limit:
            text = "[...]\n" + text[-limit:]
        sys.stderr.write(f"\n===== {title} =====\n{text}\n")


@pytest.fixture
def case_report(request: pytest.FixtureRequest) -> Callable[[str, str], CaseReport]:
    """``case_report(case, fault)``: this test's row in the suite's report."""

    def make(case: str, fault: str) -> CaseReport:
        report = CaseReport(case=case, fault=fault)
        REPORTS.append(report)
        request.node.stash[_REPORT_KEY] = report
        return report

    return make


_REPORT_KEY = pytest.StashKey[CaseReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    case = item.stash.get(_REPORT_KEY, None)
    if case is not None and report.when == "call":
        case.status = "passed" if report.passed else "FAILED"
    elif case is not None and report.failed and case.status == "passed":
        case.status = "FAILED"
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section("fault-injection report")
    for line in render(REPORTS):
        terminalreporter.write_line(line)
