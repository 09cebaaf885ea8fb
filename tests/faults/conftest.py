"""Fixtures of the fault suite, and its report at the end of the run.

Each test starts its own installation (database, queue prefix, processes) and
its own SKUs. Whatever happens, PostgreSQL and RabbitMQ are left running
after every test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import PostgresDatabases
from tests.faults.installation import FaultInstallation, running_installation
from tests.faults.report import REPORTS, CaseReport, render
from tests.faults.services import ensure_services_running

StartInstallation = Callable[..., FaultInstallation]


@pytest.fixture(autouse=True)
def _services_left_running() -> Iterator[None]:
    yield
    ensure_services_running()


@pytest.fixture
def start_installation(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    tmp_path: Path,
) -> Iterator[StartInstallation]:
    """``start_installation(name, web_workers=2, worker_env={})``: a running service."""
    with contextlib.ExitStack() as stack:

        def start(
            name: str, *, web_workers: int = 2, worker_env: dict[str, str] | None = None
        ) -> FaultInstallation:
            workdir = tmp_path / name
            workdir.mkdir()
            return stack.enter_context(
                running_installation(
                    request,
                    postgres_databases,
                    workdir,
                    name=name,
                    web_workers=web_workers,
                    worker_env=worker_env,
                )
            )

        yield start


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
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
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
