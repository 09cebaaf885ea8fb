"""The processes the suite starts (gunicorn, dramatiq, helpers), and their memory.

Each service runs in a process group of its own, so stopping it reaches the
workers it forked and nothing else on the machine. Every started group is
remembered and stopped at exit, even when the suite fails half-way.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Settings of the service that must not leak in from the caller's environment.
_SERVICE_VARIABLES = (
    "DATABASE_URL",
    "BROKER_URL",
    "LISTENERS_CONFIG",
    "QUEUE_PREFIX",
    "SCHEMAS_DIR",
    "LOW_QUANTITY_THRESHOLD",
    "OUTBOX_SWEEP_INTERVAL",
    "OUTBOX_BATCH_SIZE",
    "BIND",
    "WEB_CONCURRENCY",
    "GUNICORN_THREADS",
    "GUNICORN_ACCESS_LOG",
    "API_TOKEN",
    "PROMETHEUS_MULTIPROC_DIR",
    "dramatiq_prom_db",
)

_running: list[Service] = []


def environment(**settings: str) -> dict[str, str]:
    """The caller's environment without service settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(BIN), env.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(interval)


@dataclass
class Service:
    """A long-running subprocess in its own process group, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    started: float

    @classmethod
    def start(cls, name: str, args: Sequence[str], *, env: Mapping[str, str], log_dir: Path):
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(args),
                env=dict(env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        service = cls(name, process, log_path, time.monotonic())
        _running.append(service)
        return service

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def require_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}; its log:\n{self.tail()}"
            )

    def tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the group, SIGKILL after ``timeout`` seconds."""
        if self in _running:
            _running.remove(self)
        if self.process.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # Children may outlive the leader (a dramatiq fork process, say).
        _signal_group(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    for service in list(reversed(_running)):
        service.stop(timeout=10)


atexit.register(stop_all)


def run_helper(args: Sequence[str], *, env: Mapping[str, str], timeout: float) -> str:
    """Run a short-lived process to its end; its stdout, or an error with its output."""
    try:
        done = subprocess.run(
            list(args),
            env=dict(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(args)} ran over {timeout:.0f} s") from error
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return done.stdout


@dataclass
class RssSampler:
    """Samples the resident memory of a service's processes in the background:
    every sample and the peak, per process id (``amqp_clients`` tells which of
    them are dramatiq's worker processes)."""

    service: Service
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
            for process in self.service.descendants():
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                self.peaks[process.pid] = max(rss, self.peaks.get(process.pid, 0))
                self.samples.setdefault(process.pid, []).append((now, rss))
            self._stop.wait(self.interval)


def amqp_clients(service: Service, amqp_port: int = 5672) -> set[int]:
    """The service's processes that hold a connection to RabbitMQ (dramatiq's workers,
    as opposed to its parent and its Prometheus fork)."""
    pids = set()
    for process in service.descendants():
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        if any(c.raddr and c.raddr.port == amqp_port for c in connections):
            pids.add(process.pid)
    return pids
