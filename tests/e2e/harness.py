"""Runs the service as its users do, for the end-to-end tests.

One ``Installation`` is a fresh PostgreSQL database (migrated with
``cqrs-warehouse migrate``), a unique QUEUE_PREFIX, a listeners.yaml in a
temporary directory, the API under gunicorn and the workers under dramatiq,
all as subprocesses. Everything here waits with deadlines, never with a
fixed sleep, and fails (never skips) when PostgreSQL or RabbitMQ is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peewee
import pika
import pika.exceptions
import pytest
import requests
import yaml

from cqrs_warehouse.messaging.database import database as database_proxy
from cqrs_warehouse.messaging.message import Message
from cqrs_warehouse.messaging.outbox import OutboxRecord
from cqrs_warehouse.messaging.testing import watched_messages
from cqrs_warehouse.warehouse.processors.low_quantity import quantity_of
from tests.conftest import BROKER_URL, ROOT, SCHEMAS
from tests.e2e.custom_listener import ReceivedMessage

#: The binaries of the environment running the tests (gunicorn, dramatiq, cqrs-warehouse).
BIN = Path(sys.executable).parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
EXCHANGE = "messaging"

INCREASED = "Warehouse.Events.ProductQuantityIncreased"
SHIPPED = "Warehouse.Events.ProductQuantityShipped"
NOTIFIED = "Warehouse.Events.NotifiedLowProductQuantity"

WATCHER = {
    "name": "watcher",
    "handler": "cqrs_warehouse.messaging.testing:watch",
    "bindings": ["#"],
}
CUSTOM_LISTENER = {
    "name": "shipped_recorder",
    "handler": "tests.e2e.custom_listener:record",
    "bindings": ["Warehouse.Events.ProductQuantityShipped.*"],
}

# Variables of the service that must not leak in from the test runner's environment.
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
)


def project_listeners() -> list[dict[str, Any]]:
    """The listener entries of the project's own config/listeners.yaml."""
    document = yaml.safe_load((ROOT / "config" / "listeners.yaml").read_text(encoding="utf-8"))
    return list(document["listeners"])


def write_listeners_config(
    path: Path, listeners: Sequence[Mapping[str, Any]], *, exchange: str = EXCHANGE
) -> Path:
    document = {
        "exchange": {"name": exchange, "type": "topic"},
        "listeners": [dict(entry) for entry in listeners],
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(**settings: str | None) -> dict[str, str]:
    """The test runner's environment without any service setting, plus ``settings``.

    A setting given as None stays unset. PYTHONPATH holds the repository root,
    so that ``tests.e2e.custom_listener`` imports in the service's processes.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(BIN), os.environ.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    env["SCHEMAS_DIR"] = str(SCHEMAS)
    for key, value in settings.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def require_rabbitmq() -> None:
    try:
        connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    except pika.exceptions.AMQPError as error:
        pytest.fail(f"RabbitMQ is required at {BROKER_URL}: {error!r}")
    connection.close()


@dataclass
class Finished:
    returncode: int
    output: str


def run_to_exit(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 60
) -> Finished:
    """Run a command that is expected to stop by itself, within ``timeout`` seconds."""
    try:
        completed = subprocess.run(
            list(args),
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as error:
        output = error.output or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        pytest.fail(f"{' '.join(args)} still ran after {timeout} s; its output:\n{output}")
    return Finished(completed.returncode, completed.stdout)


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
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(args),
                env=dict(env),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a kill reaches the workers it forked.
                start_new_session=True,
            )
        return cls(name, list(args), log_path, process)

    def returncode(self) -> int | None:
        return self.process.poll()

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM, then SIGKILL to its process group after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(timeout=10)

    def kill_leftovers(self) -> None:
        """Kill whatever of its process group outlived it (e.g. orphaned workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def wait_for_http(
    url: str, services: Iterable[Service], *, timeout: float = 45
) -> requests.Response:
    """Poll ``url`` until it answers 200; fail at once if a service exits meanwhile."""
    services = list(services)
    deadline = time.monotonic() + timeout
    last_error: object = None
    while time.monotonic() < deadline:
        for service in services:
            if service.returncode() is not None:
                pytest.fail(
                    f"{service.name} exited with code {service.returncode()} before {url} "
                    f"answered; its output:\n{service.output()}"
                )
        try:
            response = requests.get(url, timeout=2)
        except requests.RequestException as error:
            last_error = error
        else:
            if response.status_code == 200:
                return response
            last_error = f"status {response.status_code}: {response.text}"
        time.sleep(0.1)  # polling interval, bounded by the deadline above
    logs = "\n".join(f"--- {s.name}:\n{s.output()}" for s in services)
    pytest.fail(f"{url} did not answer within {timeout} s (last: {last_error!r})\n{logs}")


def wait_for_exit(service: Service, timeout: float) -> int:
    try:
        return service.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{service.name} still ran after {timeout} s; its output:\n{service.output()}")


def queue_names(prefix: str, listener_names: Iterable[str]) -> list[str]:
    """Every queue the service declares for these listeners and the drain."""
    names = []
    for name in [*listener_names, "outbox_drain"]:
        queue = f"{prefix}{name}"
        names += [queue, f"{queue}.DQ", f"{queue}.XQ"]
    return names


def delete_rabbitmq_topology(
    prefix: str, listener_names: Iterable[str], *, exchange: str = EXCHANGE
) -> None:
    """Delete the queues and the exchange a service with ``prefix`` declared."""
    connection = pika.BlockingConnection(pika.URLParameters(BROKER_URL))
    try:
        channel = connection.channel()
        for queue in queue_names(prefix, listener_names):
            try:
                channel.queue_delete(queue=queue)
            except pika.exceptions.ChannelClosed:
                channel = connection.channel()
        with contextlib.suppress(pika.exceptions.ChannelClosed):
            channel.exchange_delete(exchange=f"{prefix}{exchange}")
    finally:
        connection.close()


@dataclass(repr=False)
class Installation:
    """A running service: gunicorn and dramatiq on one database and one queue prefix."""

    database_url: str
    queue_prefix: str
    base_url: str
    db: peewee.Database
    listener_names: list[str]
    services: list[Service] = field(default_factory=list)
    #: The response to the first GET /warehouse/products the installation served.
    first_products_response: requests.Response | None = None

    def __repr__(self) -> str:
        return f"<Installation {self.base_url} prefix={self.queue_prefix!r}>"

    # --- HTTP -------------------------------------------------------------

    def increase(self, sku: str, quantity: Any) -> requests.Response:
        return self.post(f"/warehouse/products/{sku}/increase_quantity", {"quantity": quantity})

    def ship(self, sku: str, quantity: Any) -> requests.Response:
        return self.post(f"/warehouse/products/{sku}/ship_quantity", {"quantity": quantity})

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None) -> requests.Response:
        if raw is not None:
            return requests.post(
                self.base_url + path,
                data=raw,
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
        return requests.post(self.base_url + path, json=body, timeout=10)

    def products(self) -> list[dict[str, Any]]:
        response = requests.get(self.base_url + "/warehouse/products", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    # --- what the service wrote (read from the test process) ----------------

    def _bind(self) -> None:
        # Other tests may point the models' database proxy elsewhere.
        database_proxy.initialize(self.db)

    def messages(self, sku: str, message_type: str | None = None) -> list[Message]:
        """Every message the watcher received about ``sku``, in the order received."""
        self._bind()
        return [m for m in watched_messages(message_type) if m.payload.get("sku") == sku]

    def all_messages(self) -> list[Message]:
        self._bind()
        return watched_messages()

    def received_by_custom_listener(self, sku: str) -> list[ReceivedMessage]:
        self._bind()
        query = ReceivedMessage.select().where(ReceivedMessage.sku == sku)
        return list(query.order_by(ReceivedMessage.message_id))

    def notifier_quantity(self, sku: str) -> int:
        self._bind()
        return quantity_of(sku)

    def outbox_size(self) -> int:
        self._bind()
        return int(OutboxRecord.select().count())

    def logs(self) -> str:
        return "\n".join(
            f"----- {s.name} ({' '.join(s.args)}):\n{s.output()}" for s in self.services
        )


def normalized(items: Iterable[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """``items`` in a canonical order, to compare them regardless of arrival order."""
    return sorted(items, key=lambda item: (item[0], json.dumps(item[1], sort_keys=True)))


def summary(messages: Iterable[Message]) -> list[tuple[str, dict[str, Any]]]:
    """(short type, payload) of each message, normalized, for readable comparisons."""
    return normalized((m.type.rsplit(".", 1)[-1], m.payload) for m in messages)


def one(items: Sequence[Any], what: str = "item") -> Any:
    assert len(items) == 1, f"expected exactly one {what}, got {len(items)}: {items!r}"
    return items[0]


def assert_eventually(assertion: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """``messaging.testing.eventually`` with the end-to-end deadline (workers boot first)."""
    from cqrs_warehouse.messaging.testing import eventually

    return eventually(assertion, timeout=timeout, interval=0.1)
