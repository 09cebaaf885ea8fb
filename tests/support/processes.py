"""Subprocesses of the service (gunicorn, dramatiq, the CLI), each in a process
group of its own, its output in a log file. Every group started is stopped at
exit, even when a run fails half-way."""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
#: The binaries of the environment running the tests (gunicorn, dramatiq, cqrs-warehouse).
BIN = Path(sys.executable).parent

_running: list[Service] = []


#: The lowest port of those handed to servers started here.
_LOWEST_PORT = 10_000


def free_port() -> int:
    """A port nothing listens on, for a server about to start, below the range
    the kernel takes the local ports of outgoing connections from. A port from
    ``bind(0)`` is in that range, and any connection to PostgreSQL or RabbitMQ
    could take it before the server binds it (seen: dramatiq's metrics server
    failing with "Address already in use", and the test waiting for it)."""
    highest = _ephemeral_ports_start()
    if highest <= _LOWEST_PORT:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(_LOWEST_PORT, highest)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between {_LOWEST_PORT} and {highest}")


def _ephemeral_ports_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii")
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_to_exit(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 90
) -> Finished:
    """Run a command that stops by itself; TimeoutError after ``timeout`` seconds."""
    try:
        completed = subprocess.run(
            list(args),
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as error:
        raise TimeoutError(
            f"{' '.join(args)} still ran after {timeout} s: {error.output!r}"
        ) from None
    return Finished(completed.returncode, completed.stdout, completed.stderr)


@dataclass
class Service:
    """A long-running subprocess whose output goes to a log file."""

    name: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, name: str, args: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_dir: Path
    ) -> Service:
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                list(args),
                env=dict(env),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a kill reaches the processes it forks
            )
        service = cls(name, list(args), log_path, process)
        _running.append(service)
        return service

    @property
    def pid(self) -> int:
        return self.process.pid

    def returncode(self) -> int | None:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def require_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}; "
                f"its log:\n{self.output()[-3000:]}"
            )

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def wait(self, timeout: float) -> int:
        """Its exit code once it stops by itself; TimeoutError after ``timeout`` seconds."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(
                f"{self.name} still ran after {timeout} s; its output:\n{self.output()[-5000:]}"
            ) from None

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL to its process group after ``timeout`` seconds; then
        kill whatever of its group outlived it (an orphaned worker, say)."""
        if self in _running:
            _running.remove(self)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        self.signal_group(signal.SIGKILL)
        return self.process.wait(timeout=10)


def _stop_all() -> None:
    for service in reversed(list(_running)):
        service.terminate(timeout=10)


atexit.register(_stop_all)
