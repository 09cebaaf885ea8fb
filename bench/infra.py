"""What the suite needs of PostgreSQL and RabbitMQ beyond tests/support: its
servers (127.0.0.1 only), this run's tag and the final sweep of its names,
the servers' versions and settings, and the memory of the processes it runs.

Databases are made and dropped by ``tests.support.services.Postgres`` and
broker names deleted by ``delete_from_broker``; every name the suite
creates starts with one tag per suite run (``bench_<hex>``), so the final
sweep removes exactly what this run made. Only servers on 127.0.0.1 are
accepted: the suite puts load on whatever it is pointed at.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

import pika
import psutil
from tests.support.services import (
    Postgres,
    ServiceMissing,
    delete_from_broker,
    require_rabbitmq,
)
from tests.support.waiting import eventually

logger = logging.getLogger(__name__)

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def require_local(url: str) -> str:
    """``url`` itself, if it names a server on this machine; else stop."""
    host = urllib.parse.urlsplit(url).hostname
    if host not in _LOCAL_HOSTS:
        raise SystemExit(f"bench: refusing to load {host!r}; only 127.0.0.1 may be a target")
    return url


def new_tag() -> str:
    return f"bench_{uuid.uuid4().hex[:8]}"


def postgres() -> Postgres:
    """The PostgreSQL the suite makes its databases in (BENCH_POSTGRES_URL)."""
    return Postgres(require_local(POSTGRES_URL))


def broker_parameters(url: str = BROKER_URL) -> pika.URLParameters:
    return pika.URLParameters(require_local(url))


def execute(server: Postgres, database: str, statement: str) -> None:
    """``statement`` in ``database``, autocommit."""
    connection = server.connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def _query(server: Postgres, statement: str, params: tuple = ()) -> list[tuple]:
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall())
    finally:
        connection.close()


def server_version(server: Postgres) -> str:
    return str(_query(server, "SHOW server_version")[0][0])


def server_settings(server: Postgres, names: tuple[str, ...]) -> dict[str, str]:
    return dict(
        _query(
            server,
            "SELECT name, setting || COALESCE(unit, '') FROM pg_settings WHERE name = ANY(%s)",
            (list(names),),
        )
    )


def sweep_databases(server: Postgres, tag: str) -> None:
    """Drop every database whose name starts with ``tag`` (those this suite run
    made, including any a crash left untracked)."""
    listed = _query(
        server, "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (tag,)
    )
    for name in sorted({row[0] for row in listed} | set(server.created), reverse=True):
        try:
            server.drop(name)
        except Exception as error:
            logger.warning("could not drop database %s: %s", name, error)


def rabbitmq_version(url: str = BROKER_URL) -> str:
    connection = pika.BlockingConnection(broker_parameters(url))
    try:
        # pika keeps the server's properties from the handshake only here.
        properties = connection._impl.server_properties
        version = properties.get("version", b"?")
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        connection.close()


def wait_for_servers(server: Postgres, url: str = BROKER_URL, timeout: float = 120) -> None:
    """Until PostgreSQL and RabbitMQ both accept connections again."""

    def up() -> None:
        try:
            server.connect().close()
            require_rabbitmq(url)
        except ServiceMissing as error:
            raise AssertionError(str(error)) from error

    eventually(up, timeout=timeout, interval=1.0)


def sweep_broker(tag: str, url: str = BROKER_URL) -> list[str]:
    """Delete every queue and exchange whose name starts with ``tag``; returns their names.

    Lists them with rabbitmqctl when it is installed (it sees queues that a
    crashed run declared under names we did not predict).
    """
    if shutil.which("rabbitmqctl") is None:
        return []
    found: dict[str, list[str]] = {}
    for kind in ("queues", "exchanges"):
        listed: list[str] = []
        for attempt in range(1, 6):  # the shared broker may be restarting
            try:
                listed = subprocess.run(
                    ["rabbitmqctl", "-q", f"list_{kind}", "name"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                ).stdout.split()
                break
            except (OSError, subprocess.SubprocessError) as error:
                logger.warning("rabbitmqctl list_%s failed (%d of 5): %s", kind, attempt, error)
                time.sleep(3)
        found[kind] = [name for name in listed if name.startswith(tag)]
    if found["queues"] or found["exchanges"]:
        delete_from_broker(found["queues"], found["exchanges"], require_local(url))
    return found["queues"] + found["exchanges"]


@dataclass
class RssSampler:
    """Samples the resident memory of a process's descendants in the background:
    every sample and the peak, per process id."""

    pid: int
    interval: float = 0.2
    peaks: dict[int, int] = field(default_factory=dict)
    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                processes = psutil.Process(self.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                processes = []
            for process in processes:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[process.pid] = max(rss, self.peaks.get(process.pid, 0))
                self.samples.setdefault(process.pid, []).append((now, rss))
            self._stop.wait(self.interval)
