"""What the fault cases (tests/faults/test_*.py) share: their SKUs, their load, and
their common ending (convergence, every check, the report's row)."""

from __future__ import annotations

from collections.abc import Callable

from tests.faults.checks import assert_converged, fill_outcomes
from tests.faults.installation import FaultInstallation
from tests.faults.load import Client, Load, plan
from tests.faults.report import CaseReport
from tests.support.services import unique_name
from tests.support.waiting import eventually

CaseReportFactory = Callable[[str, str], CaseReport]

COMMANDS = 240
CLIENTS = 6
PAUSE = 0.02


def skus_for(case: str, count: int = 4) -> list[str]:
    base = unique_name(case)
    return [f"{base}-{i}" for i in range(count)]


def start_load(
    installation: FaultInstallation, skus: list[str], *, seed: int, **client_options: object
) -> tuple[Client, Load]:
    client = Client(installation.base_url, **client_options)  # type: ignore[arg-type]
    load = Load(client, plan(skus, COMMANDS, seed=seed), clients=CLIENTS, pause=PAUSE).start()
    return client, load


def wait_for_part_of(load: Load, fraction: float = 1 / 3, timeout: float = 60) -> None:
    """Until the load has sent ``fraction`` of its commands (or one of its clients failed)."""
    wanted = int(len(load.commands) * fraction)

    def sent() -> None:
        assert load.done >= wanted or load.failures, f"{load.done} of {wanted} commands sent"

    eventually(sent, timeout=timeout, interval=0.05)


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
        installation,
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
