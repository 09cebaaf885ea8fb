"""What the fault suite needs of an installation beyond the shared one
(tests/support/installation.py): gunicorn and `dramatiq -p 2 -t 4` over a
database and a queue prefix of its own, the watcher bound to "#".

The workers are stopped, killed and started again by the tests: every run of
them keeps its own log file, and their Prometheus metrics are served on a
port (and kept in a folder) of the installation's own, so the counters of a
killed worker process still add up in the totals. Here: those totals, the
queues' backlog, row locks held by a thread of the test, the sessions that
wait for a lock and the worker process that owns one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import peewee

from tests.support.installation import EXCHANGE, Installation
from tests.support.processes import Service
from tests.support.prometheus import metric, samples
from tests.support.services import queue_depth
from tests.support.waiting import eventually

WORKER_PROCESSES = 2
WORKER_THREADS = 4


class FaultInstallation(Installation):
    """An installation (``Installation.create``) with the fault suite's readings."""

    def __repr__(self) -> str:
        return f"<FaultInstallation {self.name} prefix={self.queue_prefix!r}>"

    @property
    def listener_names(self) -> list[str]:
        return [entry["name"] for entry in self.listeners]

    def queue(self, listener: str) -> str:
        return f"{self.queue_prefix}{listener}"

    @property
    def exchange(self) -> str:
        return f"{self.queue_prefix}{EXCHANGE}"

    # --- the workers ------------------------------------------------------------

    def start_fault_workers(
        self, *, module: str = "cqrs_warehouse.worker", env: Mapping[str, str] = {}
    ) -> Service:
        """The suite's workers: ``dramatiq MODULE`` with 2 processes of 4 threads;
        returns once they serve their metrics."""
        return self.start_workers(
            processes=WORKER_PROCESSES, threads=WORKER_THREADS, module=module, env=env
        )

    def wait_for_workers_to_exit(self, timeout: float = 60) -> int:
        """Wait for the current dramatiq to stop by itself (it does once one of its
        worker processes died); kill what it left behind; its exit code."""
        workers = self.current("dramatiq")
        code = workers.wait(timeout)
        workers.signal_group(signal.SIGKILL)  # an orphaned worker process, say
        return code

    def worker_logs(self) -> str:
        return "\n".join(s.output() for s in self.services if s.name.startswith("dramatiq"))

    # --- metrics and queues -------------------------------------------------------

    def listener_outcomes(self) -> dict[str, int]:
        """cqrs_listener_messages_total summed over listeners and worker processes,
        per outcome."""
        totals: dict[str, int] = {}
        for sample in samples(self.worker_metrics()):
            if sample.name == "cqrs_listener_messages_total":
                outcome = sample.labels.get("outcome", "?")
                totals[outcome] = totals.get(outcome, 0) + int(sample.value)
        return totals

    def published_total(self) -> int:
        return int(metric(self.worker_metrics(), "cqrs_outbox_published_total"))

    def queue_backlog(self) -> dict[str, int]:
        """Messages waiting (ready, or delayed for a retry) in each listener's queues."""
        return {
            listener: sum(
                queue_depth(queue, self.env["BROKER_URL"])
                for queue in (self.queue(listener), f"{self.queue(listener)}.DQ")
            )
            for listener in self.listener_names
        }


class LockedRows:
    """Holds the rows of ``query`` locked (SELECT ... FOR UPDATE) in a transaction of
    its own thread until ``release()`` (or the end of the ``with`` block)."""

    def __init__(self, installation: Installation, query: peewee.ModelSelect) -> None:
        self.installation = installation
        self.query = query
        self.rows: list[Any] = []
        self._locked = threading.Event()
        self._release = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="row-locks", daemon=True)

    def __enter__(self) -> LockedRows:
        self._thread.start()

        def locked() -> None:
            assert self._locked.is_set() or not self._thread.is_alive(), "the rows are not locked"

        eventually(locked, timeout=60)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            # A connection of this thread's own, on the installation's database.
            with self.installation.reading() as runtime, runtime.database.atomic():
                self.rows = list(self.query.bind(runtime.database).for_update())
                self._locked.set()
                self._release.wait(120)
        except BaseException as error:  # e.g. the database was stopped meanwhile
            self._failure = error


def lock_waits(installation: Installation) -> list[tuple[int, str]]:
    """(client port, query) of every session of the installation's database waiting
    for a lock (PostgreSQL's own pg_stat_activity view)."""
    with installation.reading() as runtime:
        cursor = runtime.database.execute_sql(
            "SELECT client_port, query FROM pg_catalog.pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return [(int(port), str(query)) for port, query in cursor.fetchall()]


def waiting_on(installation: Installation, table: str) -> list[int]:
    """Client ports of the sessions waiting for a lock in a statement on ``table``
    (a prepared statement's name holds its table's: see messaging/storage/postgres.py)."""
    return [port for port, query in lock_waits(installation) if table in query]


def pid_of_local_port(port: int, candidates: list[int]) -> int | None:
    """Which of the ``candidates`` processes owns the TCP socket bound to local ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for pid in candidates:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        return pid
    return None
