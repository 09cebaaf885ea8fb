"""CPU time spent by each part of the system over a measuring window.

Used by the pipeline scenario to turn deliveries/s into CPU-milliseconds per
delivery for the API, the workers, PostgreSQL (the backends connected to the
run's own database), RabbitMQ (the broker's whole VM; other users of the
broker on this machine count too) and the load generator. Those costs are
what the scaling estimate beyond 2 cores is built from.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil
import psycopg2.extensions

PidSource = Callable[[], list[int]]


def tree(pid: int) -> PidSource:
    """A process and its descendants, looked up at each snapshot."""

    def pids() -> list[int]:
        try:
            root = psutil.Process(pid)
            return [pid, *(child.pid for child in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    return pids


def postgres_backends(connection: psycopg2.extensions.connection, database: str) -> PidSource:
    """The server processes serving ``database`` (not the reading connection itself)."""

    def pids() -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            return [int(row[0]) for row in cursor.fetchall()]

    return pids


def by_name(*names: str) -> PidSource:
    def pids() -> list[int]:
        return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names]

    return pids


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    seconds = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        seconds[pid] = times.user + times.system
    return seconds


class CpuMeter:
    """``start()`` then ``stop()``: CPU seconds per group over the window.

    A process counts only if seen at both ends (per-process deltas), so a
    process that starts or ends inside the window is left out rather than
    counted with its whole lifetime.
    """

    def __init__(self, groups: dict[str, PidSource]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine_start = 0.0

    def start(self) -> None:
        self._start = {name: _cpu_seconds(source()) for name, source in self.groups.items()}
        self._machine_start = _machine_busy()

    def stop(self) -> dict[str, float]:
        used = {}
        for name, source in self.groups.items():
            before = self._start.get(name, {})
            after = _cpu_seconds(source())
            used[name] = sum(after[pid] - before[pid] for pid in after if pid in before)
        used["machine"] = _machine_busy() - self._machine_start
        return used


def _machine_busy() -> float:
    times = psutil.cpu_times()
    # Time stolen by the hypervisor and guest time (already in user) left out.
    return times.user + times.nice + times.system + times.irq + times.softirq
