"""A running service for the fault suite: gunicorn and `dramatiq cqrs_warehouse.worker`
as subprocesses over a fresh PostgreSQL database and a unique QUEUE_PREFIX.

Built on tests/e2e/harness.py. Unlike the end-to-end installation, the
workers here are stopped, killed and started again by the tests, every run
of them keeps its own log file, and their Prometheus metrics are served on
a port (and kept in a folder) of this installation's own, so the counters of
a killed worker process still add up in the totals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee
import pika
import pika.exceptions
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cqrs_warehouse.messaging.database import apply_slice_schemas, open_database
from cqrs_warehouse.messaging.database import database as database_proxy
from cqrs_warehouse.messaging.testing import create_watcher_table
from tests.conftest import BROKER_URL, PostgresDatabases, unique_name
from tests.e2e.harness import (
    BIN,
    GUNICORN_CONF,
    WATCHER,
    Service,
    delete_rabbitmq_topology,
    free_port,
    project_listeners,
    require_rabbitmq,
    run_to_exit,
    service_env,
    wait_for_exit,
    wait_for_http,
    write_listeners_config,
)
from tests.faults.services import ensure_services_running

WORKER_PROCESSES = 2
WORKER_THREADS = 4


@dataclass(repr=False)
class FaultInstallation:
    name: str
    workdir: Path
    env: dict[str, str]
    database_url: str
    queue_prefix: str
    base_url: str
    metrics_port: int
    db: peewee.Database
    listener_names: list[str]
    gunicorn: Service | None = None
    workers: Service | None = None
    services: list[Service] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<FaultInstallation {self.name} prefix={self.queue_prefix!r}>"

    def queue(self, listener: str) -> str:
        return f"{self.queue_prefix}{listener}"

    @property
    def exchange(self) -> str:
        return f"{self.queue_prefix}messaging"

    def bind(self) -> peewee.Database:
        """Point the models at this installation's database (other tests may have moved them)."""
        database_proxy.initialize(self.db)
        apply_slice_schemas(self.db)
        return self.db

    # --- processes ------------------------------------------------------------

    def start_api(self, web_workers: int = 2) -> None:
        port = int(self.base_url.rsplit(":", 1)[1])
        metrics_dir = self.workdir / "api-metrics"
        metrics_dir.mkdir(exist_ok=True)
        env = {
            **self.env,
            "WEB_CONCURRENCY": str(web_workers),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        self.gunicorn = self._start(
            "gunicorn",
            [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{port}"],
            env,
        )

    def start_workers(self, **extra_env: str) -> Service:
        """Start `dramatiq cqrs_warehouse.worker -p 2 -t 4`; return once it serves metrics."""
        runs = sum(1 for s in self.services if s.name.startswith("dramatiq"))
        self.workers = self._start(
            f"dramatiq-{runs + 1}",
            [
                str(BIN / "dramatiq"),
                "cqrs_warehouse.worker",
                "-p",
                str(WORKER_PROCESSES),
                "-t",
                str(WORKER_THREADS),
            ],
            {**self.env, **extra_env},
        )
        # Dramatiq forks its metrics server once every worker process has booted.
        wait_for_http(self.metrics_url, [self.workers])
        return self.workers

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> Service:
        service = Service.start(name, args, env=env, cwd=self.workdir, log_dir=self.workdir)
        self.services.append(service)
        return service

    def wait_until_serving(self) -> None:
        assert self.gunicorn is not None
        wait_for_http(self.base_url + "/warehouse/products", [s for s in self.services])

    def worker_pids(self) -> list[int]:
        """The PIDs of the current dramatiq's worker processes (not its metrics fork)."""
        assert self.workers is not None
        children = _children(self.workers.process.pid)
        # Dramatiq forks the worker processes first and its metrics server
        # only once they have all booted: the workers are the eldest children.
        children.sort(key=lambda pid: (_start_time(pid), pid))
        pids = children[:WORKER_PROCESSES]
        assert len(pids) == WORKER_PROCESSES, f"dramatiq's children: {children}"
        return pids

    def kill_one_worker_process(self) -> int:
        pid = self.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_for_workers_to_exit(self, timeout: float = 60) -> int:
        """Wait for the current dramatiq to stop by itself; kill what it left behind."""
        assert self.workers is not None
        code = wait_for_exit(self.workers, timeout)
        self.workers.kill_leftovers()
        return code

    def stop_workers_gracefully(self, timeout: float = 60) -> int:
        """SIGTERM to dramatiq's main process; return its exit code."""
        assert self.workers is not None
        self.workers.process.send_signal(signal.SIGTERM)
        return self.wait_for_workers_to_exit(timeout)

    def logs(self) -> str:
        return "\n".join(
            f"----- {s.name} ({' '.join(s.args)}):\n{s.output()}" for s in self.services
        )

    def worker_logs(self) -> str:
        return "\n".join(s.output() for s in self.services if s.name.startswith("dramatiq"))

    # --- metrics --------------------------------------------------------------

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/"

    def worker_metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """Every sample the workers' Prometheus server reports: {name: {labels: value}}."""
        response = requests.get(self.metrics_url, timeout=10)
        assert response.status_code == 200, response.text
        samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                labels = tuple(sorted(sample.labels.items()))
                per_name = samples.setdefault(sample.name, {})
                per_name[labels] = per_name.get(labels, 0.0) + sample.value
        return samples

    def listener_outcomes(self) -> dict[str, int]:
        """cqrs_listener_messages_total summed over listeners, per outcome."""
        totals: dict[str, int] = {}
        for labels, value in self.worker_metrics().get("cqrs_listener_messages_total", {}).items():
            outcome = dict(labels).get("outcome", "?")
            totals[outcome] = totals.get(outcome, 0) + int(value)
        return totals

    def queue_backlog(self) -> dict[str, int]:
        """Messages waiting (ready, or delayed for a retry) in each listener's queues."""
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
        try:
            backlog = {}
            for listener in self.listener_names:
                total = 0
                for queue in (self.queue(listener), f"{self.queue(listener)}.DQ"):
                    channel = connection.channel()
                    try:
                        declared = channel.queue_declare(queue=queue, passive=True)
                    except pika.exceptions.ChannelClosedByBroker:
                        continue  # never declared: nothing waits there
                    total += declared.method.message_count
                    channel.close()
                backlog[listener] = total
            return backlog
        finally:
            connection.close()

    def published_total(self) -> int:
        values = self.worker_metrics().get("cqrs_outbox_published_total", {})
        return int(sum(values.values()))


class LockedRows:
    """Holds the rows of ``query`` locked (SELECT ... FOR UPDATE) in a transaction of
    its own thread until ``release()`` (or the end of the ``with`` block)."""

    def __init__(self, installation: FaultInstallation, query: peewee.ModelSelect) -> None:
        self.installation = installation
        self.query = query
        self.rows: list[Any] = []
        self._locked = threading.Event()
        self._release = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="row-locks", daemon=True)

    def __enter__(self) -> LockedRows:
        self._thread.start()
        wait_for(lambda: self._locked.is_set() or not self._thread.is_alive(), "the row locks")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)

    def _run(self) -> None:
        db = self.installation.bind()
        try:
            with db.atomic():
                self.rows = list(self.query.for_update())
                self._locked.set()
                self._release.wait(120)
        except BaseException as error:  # e.g. the database was stopped meanwhile
            self._failure = error
        finally:
            with contextlib.suppress(Exception):
                db.close()


def lock_waits(installation: FaultInstallation) -> list[tuple[int, str]]:
    """(client port, query) of every session of the installation's database waiting
    for a lock (PostgreSQL's own pg_stat_activity view)."""
    db = installation.bind()
    with db.connection_context():
        cursor = db.execute_sql(
            "SELECT client_port, query FROM pg_catalog.pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return [(int(port), str(query)) for port, query in cursor.fetchall()]


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


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def _start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


@contextlib.contextmanager
def running_installation(
    request: pytest.FixtureRequest,
    postgres_databases: PostgresDatabases,
    workdir: Path,
    *,
    name: str,
    web_workers: int = 2,
    worker_env: dict[str, str] | None = None,
) -> Iterator[FaultInstallation]:
    """gunicorn and dramatiq on a new database and queue prefix, with a watcher
    listener bound to "#"; everything stopped and deleted afterwards."""
    require_rabbitmq()
    failures_before = request.session.testsfailed
    database_url = postgres_databases.create()
    queue_prefix = unique_name(f"fault_{name}") + "."
    listeners = [*project_listeners(), WATCHER]
    config = write_listeners_config(workdir / "listeners.yaml", listeners)
    port, metrics_port = free_port(), free_port()
    metrics_dir = workdir / "worker-metrics"
    metrics_dir.mkdir()
    env = service_env(
        DATABASE_URL=database_url,
        BROKER_URL=BROKER_URL,
        LISTENERS_CONFIG=str(config),
        QUEUE_PREFIX=queue_prefix,
        OUTBOX_SWEEP_INTERVAL="0.5",
        LOG_FORMAT="json",
        CQRS_FAULT_KILL_AFTER_PUBLISH=None,
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(metrics_port),
        dramatiq_prom_db=str(metrics_dir),
        PROMETHEUS_MULTIPROC_DIR=None,
    )
    migrated = run_to_exit([str(BIN / "cqrs-warehouse"), "migrate"], env=env, cwd=workdir)
    assert migrated.returncode == 0, migrated.output
    db = open_database(database_url)
    create_watcher_table()
    installation = FaultInstallation(
        name=name,
        workdir=workdir,
        env=env,
        database_url=database_url,
        queue_prefix=queue_prefix,
        base_url=f"http://127.0.0.1:{port}",
        metrics_port=metrics_port,
        db=db,
        listener_names=[entry["name"] for entry in listeners],
    )
    try:
        installation.start_api(web_workers)
        installation.start_workers(**(worker_env or {}))
        installation.wait_until_serving()
        yield installation
    finally:
        ensure_services_running()
        for service in reversed(installation.services):
            service.terminate()
            service.kill_leftovers()
        if request.session.testsfailed > failures_before:
            _print_logs(request, f"service logs of {queue_prefix}", installation.logs())
        db.close()
        delete_rabbitmq_topology(queue_prefix, installation.listener_names)


def _print_logs(request: pytest.FixtureRequest, title: str, text: str) -> None:
    import sys

    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        # The last part of each log is what tells the story; keep the output bounded.
        limit = 60_000
        if len(text) > limit:
            text = "[...]\n" + text[-limit:]
        sys.stderr.write(f"\n===== {title} =====\n{text}\n")


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    """Wait for ``condition()`` to be true, or fail after ``timeout`` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # polling interval, bounded by the deadline above


def signal_process_group(service: Service, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(service.process.pid, signum)
    with contextlib.suppress(subprocess.TimeoutExpired):
        service.process.wait(timeout=30)
