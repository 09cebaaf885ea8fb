"""Stopping and starting the machine's own PostgreSQL and RabbitMQ, for the fault suite.

Every function here fails the test (never skips) when a control command is
missing or refuses. ``ensure_services_running`` brings both back whatever
state a failed test left them in; the suite calls it in ``finally`` blocks
and after every test.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pika
import pika.exceptions
import pytest

from tests.support.services import BROKER_URL
from tests.support.waiting import eventually

POSTGRES_CLUSTER = "main"
_DEADLINE = 90.0


def _run(args: list[str], *, timeout: float = 120) -> str:
    if shutil.which(args[0]) is None:
        pytest.fail(f"the fault suite needs {args[0]} on PATH (it restarts the service)")
    try:
        completed = subprocess.run(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(args)} still ran after {timeout} s: {error.output!r}")
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited with {completed.returncode}:\n{completed.stdout}")
    return completed.stdout


# --- RabbitMQ -----------------------------------------------------------------


def rabbitmqctl(*args: str) -> str:
    return _run(["rabbitmqctl", *args])


def rabbitmq_accepts_connections() -> bool:
    try:
        parameters = pika.URLParameters(BROKER_URL)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 2
        pika.BlockingConnection(parameters).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


def stop_rabbitmq_app() -> None:
    rabbitmqctl("stop_app")


def start_rabbitmq_app() -> None:
    rabbitmqctl("start_app")
    rabbitmqctl("await_startup", "--timeout", "120")
    _wait_until(rabbitmq_accepts_connections, "RabbitMQ to accept connections")


def close_all_rabbitmq_connections(reason: str) -> str:
    return rabbitmqctl("close_all_connections", reason)


# --- PostgreSQL ---------------------------------------------------------------


def postgres_version() -> str:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*") if p.is_dir())
    if not versions:
        pytest.fail("no PostgreSQL cluster under /etc/postgresql: the fault suite restarts it")
    return versions[-1]


def pg_ctlcluster(action: str, *options: str) -> str:
    return _run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            postgres_version(),
            POSTGRES_CLUSTER,
            action,
            *options,
        ]
    )


def postgres_accepts_connections() -> bool:
    if shutil.which("pg_isready") is None:
        pytest.fail("the fault suite needs pg_isready on PATH")
    completed = subprocess.run(
        ["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=30, check=False
    )
    return completed.returncode == 0


def stop_postgres_immediately() -> None:
    """Stop PostgreSQL the way a crash does: no checkpoint, clients cut off."""
    pg_ctlcluster("stop", "-m", "immediate")


def start_postgres() -> None:
    pg_ctlcluster("start")
    _wait_until(postgres_accepts_connections, "PostgreSQL to accept connections")


# --- both -----------------------------------------------------------------------


def ensure_services_running() -> None:
    """Start whichever of PostgreSQL and RabbitMQ is down (a failed test may leave one so)."""
    if not postgres_accepts_connections():
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                postgres_version(),
                POSTGRES_CLUSTER,
                "start",
            ],
            timeout=120,
            check=False,
        )
        _wait_until(postgres_accepts_connections, "PostgreSQL to accept connections")
    if not rabbitmq_accepts_connections():
        subprocess.run(["rabbitmqctl", "start_app"], timeout=120, check=False)
        subprocess.run(["rabbitmqctl", "await_startup", "--timeout", "120"], timeout=130)
        _wait_until(rabbitmq_accepts_connections, "RabbitMQ to accept connections")


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = _DEADLINE) -> None:
    def holds() -> None:
        assert condition(), f"still waiting for {what} after {timeout} s"

    eventually(holds, timeout=timeout, interval=0.2)
