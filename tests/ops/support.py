"""Helpers of the operational tests.

``start_installation`` runs the service as ``tests/e2e/harness.py`` does
(gunicorn and dramatiq subprocesses over a fresh PostgreSQL database and a
unique QUEUE_PREFIX, with the watcher on ``#``), plus what operating it
needs: extra environment (credentials in the URLs, a metrics port for the
workers, a Prometheus folder for the API), the ``picky`` listeners of
``tests/ops/picky.py`` that fail on demand, and stopping and restarting the
API and the workers one at a time. It only composes the harness's pieces.
"""

from __future__ import annotations

import contextlib
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq.broker
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cqrs_warehouse.messaging import listener_state
from cqrs_warehouse.messaging import listeners as listeners_module
from cqrs_warehouse.messaging import outbox as outbox_module
from cqrs_warehouse.messaging.database import database as database_proxy
from cqrs_warehouse.messaging.database import open_database
from cqrs_warehouse.messaging.dead_letters import DeadLetter
from cqrs_warehouse.messaging.testing import create_watcher_table, eventually
from cqrs_warehouse.warehouse.commands import ProductStock
from cqrs_warehouse.warehouse.views.products.models import ProductView
from tests.conftest import BROKER_URL, PostgresDatabases, unique_name
from tests.e2e.harness import (
    BIN,
    GUNICORN_CONF,
    WATCHER,
    Installation,
    Service,
    assert_eventually,
    delete_rabbitmq_topology,
    free_port,
    project_listeners,
    service_env,
    wait_for_http,
    write_listeners_config,
)
from tests.ops import picky

PICKY_BINDINGS = [
    "Warehouse.Events.ProductQuantityIncreased.*",
    "Warehouse.Events.ProductQuantityShipped.*",
]
PICKY_RETRY = {"max_attempts": 2, "min_delay": 0.1, "max_delay": 0.2}

#: Settings the harness does not clear from the test runner's environment.
_MORE_SERVICE_VARIABLES = (
    "API_TOKEN",
    "MAX_BODY_BYTES",
    "CONSISTENCY_TIMEOUT",
    "LOG_FORMAT",
    "PROMETHEUS_MULTIPROC_DIR",
    "prometheus_multiproc_dir",
    "dramatiq_prom_host",
    "dramatiq_prom_port",
    "dramatiq_prom_db",
)


def picky_listener(name: str, *, max_attempts: int = 2) -> dict[str, Any]:
    return {
        "name": name,
        "handler": f"tests.ops.picky:{name}",
        "bindings": list(PICKY_BINDINGS),
        "retry": {**PICKY_RETRY, "max_attempts": max_attempts},
    }


def ops_listeners() -> list[dict[str, Any]]:
    """The project's listeners, the watcher and the three picky listeners."""
    return [
        *project_listeners(),
        WATCHER,
        picky_listener("picky"),
        picky_listener("picky_all", max_attempts=1),
        picky_listener("picky_other", max_attempts=1),
    ]


def ops_env(**settings: str | None) -> dict[str, str]:
    """``service_env`` that also clears the operational settings unless given."""
    cleared: dict[str, str | None] = dict.fromkeys(_MORE_SERVICE_VARIABLES)
    return service_env(**{**cleared, **settings})


def with_password(url: str, secret: str) -> tuple[str, str]:
    """``url`` with a password (``secret`` unless it has one); returns (url, password)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        return url, parts.password
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or "postgres"
    netloc = f"{user}:{secret}@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), secret


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli(
    args: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float = 90
) -> CliResult:
    """Run ``cqrs-warehouse ARGS`` to its exit, within ``timeout`` seconds."""
    command = [str(BIN / "cqrs-warehouse"), *args]
    try:
        completed = subprocess.run(
            command,
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)} still ran after {timeout} s: {error.output!r}")
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


# --- Prometheus text ----------------------------------------------------------


def samples(text: str) -> list[Any]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def metric_labels(text: str, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for s in samples(text) if s.name == name]


# --- the in-process state the tests touch -------------------------------------


#: Module globals that bootstrap sets (the names differ across versions).
_BOOTSTRAP_GLOBALS = (
    (database_proxy, "obj"),
    (outbox_module, "_current"),
    (dramatiq.broker, "global_broker"),
    (listeners_module, "applied_channel"),
    (listeners_module, "_announce_channel"),
    (listeners_module, "_announced"),
)


@contextlib.contextmanager
def process_globals_restored() -> Iterator[None]:
    """Put back what bootstrap sets in this process (the database proxy, the
    outbox, Dramatiq's global broker, the applied channel) when the block ends."""
    missing = object()
    saved = [(owner, name, getattr(owner, name, missing)) for owner, name in _BOOTSTRAP_GLOBALS]
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is not missing:
                setattr(owner, name, value)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (free_port closes its socket)."""
    return free_port()


# --- an installation ----------------------------------------------------------


@dataclass(repr=False)
class OpsInstallation(Installation):
    workdir: Path = Path()
    config: Path = Path()
    port: int = 0
    prom_port: int = 0
    api_env: dict[str, str] = field(default_factory=dict)
    worker_env: dict[str, str] = field(default_factory=dict)
    cli_env: dict[str, str] = field(default_factory=dict)
    worker_args: list[str] = field(default_factory=list)
    #: Secrets in the service's URLs, which must never be logged.
    secrets: list[str] = field(default_factory=list)
    _started: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<OpsInstallation {self.base_url} prefix={self.queue_prefix!r}>"

    # --- processes ------------------------------------------------------------

    def _start(self, kind: str, args: list[str], env: Mapping[str, str]) -> Service:
        self._started[kind] = self._started.get(kind, 0) + 1
        service = Service.start(
            f"{kind}-{self._started[kind]}",
            args,
            env=env,
            cwd=self.workdir,
            log_dir=self.workdir,
        )
        self.services.append(service)
        return service

    def start_api(self) -> Service:
        service = self._start(
            "gunicorn",
            [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{self.port}"],
            self.api_env,
        )
        wait_for_http(self.base_url + "/readyz", [service])
        return service

    def start_workers(self) -> Service:
        return self._start("dramatiq", [str(BIN / "dramatiq"), *self.worker_args], self.worker_env)

    def current(self, kind: str) -> Service:
        return [s for s in self.services if s.name.startswith(f"{kind}-")][-1]

    def api(self) -> Service:
        return self.current("gunicorn")

    def workers(self) -> Service:
        return self.current("dramatiq")

    def all_output(self) -> str:
        return "\n".join(service.output() for service in self.services)

    # --- operating it -----------------------------------------------------------

    def cli(self, *args: str, timeout: float = 90) -> CliResult:
        return cli(args, env=self.cli_env, cwd=self.workdir, timeout=timeout)

    def api_metrics(self) -> str:
        response = requests.get(self.base_url + "/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def worker_metrics(self) -> str:
        response = requests.get(f"http://127.0.0.1:{self.prom_port}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def wait_for_worker_metrics(self, timeout: float = 30) -> str:
        def answered() -> str:
            try:
                return self.worker_metrics()
            except requests.RequestException as error:
                raise AssertionError(f"no worker metrics yet: {error!r}") from error

        return eventually(answered, timeout=timeout, interval=0.1)

    # --- state -------------------------------------------------------------------

    def bind(self) -> None:
        database_proxy.initialize(self.db)

    def command_state(self, skus: Sequence[str] | None = None) -> dict[str, int]:
        self.bind()
        query = ProductStock.select()
        if skus is not None:
            query = query.where(ProductStock.sku.in_(list(skus)))
        return {row.sku: int(row.quantity) for row in query}

    def view_state(self, skus: Sequence[str] | None = None) -> dict[str, int]:
        self.bind()
        query = ProductView.select()
        if skus is not None:
            query = query.where(ProductView.sku.in_(list(skus)))
        return {row.sku: int(row.quantity) for row in query}

    def wait_until_view_matches_commands(self, timeout: float = 30) -> dict[str, int]:
        """Until every event is published and applied: view == command state."""

        def settled() -> dict[str, int]:
            state = self.command_state()
            assert self.outbox_size() == 0, "the outbox still holds messages"
            view = self.view_state()
            assert view == state, {
                sku: (state.get(sku), view.get(sku))
                for sku in set(state) | set(view)
                if state.get(sku) != view.get(sku)
            }
            return state

        return eventually(settled, timeout=timeout, interval=0.1)


@contextlib.contextmanager
def start_installation(
    postgres_databases: PostgresDatabases,
    workdir: Path,
    *,
    listeners: Sequence[Mapping[str, Any]] | None = None,
    web_concurrency: int = 2,
    worker_processes: int = 2,
    worker_threads: int = 4,
    extra_env: Mapping[str, str | None] | None = None,
) -> Iterator[OpsInstallation]:
    """Migrate a fresh database, start gunicorn and dramatiq; stop everything after."""
    plain_url = postgres_databases.create()
    secret = f"s3cret-{uuid.uuid4().hex[:10]}"
    database_url, db_password = with_password(plain_url, secret)
    broker_password = urllib.parse.urlsplit(BROKER_URL).password
    queue_prefix = unique_name("ops") + "."
    listeners = list(listeners if listeners is not None else ops_listeners())
    config = write_listeners_config(workdir / "listeners.yaml", listeners)
    port, prom_port = free_port(), free_port()
    api_metrics = workdir / "api-metrics"
    api_metrics.mkdir()
    base = {
        "DATABASE_URL": database_url,
        "BROKER_URL": BROKER_URL,
        "LISTENERS_CONFIG": str(config),
        "QUEUE_PREFIX": queue_prefix,
        "OUTBOX_SWEEP_INTERVAL": "0.5",
        **(extra_env or {}),
    }
    cli_env = ops_env(**base)
    api_env = ops_env(
        **base, WEB_CONCURRENCY=str(web_concurrency), PROMETHEUS_MULTIPROC_DIR=str(api_metrics)
    )
    worker_env = ops_env(
        **base,
        dramatiq_prom_host="127.0.0.1",
        dramatiq_prom_port=str(prom_port),
        dramatiq_prom_db=str(workdir / "worker-metrics"),
    )
    migrated = cli(["migrate"], env=cli_env, cwd=workdir)
    assert migrated.returncode == 0, migrated.output
    db = open_database(database_url)
    create_watcher_table()
    picky.create_tables()
    installation = OpsInstallation(
        database_url=database_url,
        queue_prefix=queue_prefix,
        base_url=f"http://127.0.0.1:{port}",
        db=db,
        listener_names=[entry["name"] for entry in listeners],
        workdir=workdir,
        config=config,
        port=port,
        prom_port=prom_port,
        api_env=api_env,
        worker_env=worker_env,
        cli_env=cli_env,
        worker_args=[
            "cqrs_warehouse.worker",
            "-p",
            str(worker_processes),
            "-t",
            str(worker_threads),
        ],
        secrets=[p for p in (db_password, broker_password) if p],
    )
    try:
        installation.start_workers()
        installation.start_api()
        installation.first_products_response = wait_for_http(
            installation.base_url + "/warehouse/products", installation.services
        )
        yield installation
    finally:
        for service in installation.services:
            service.terminate()
            service.kill_leftovers()
        db.close()
        delete_rabbitmq_topology(queue_prefix, installation.listener_names)


# --- dead letters made by the picky listeners ------------------------------------


def refuse(ops: OpsInstallation, listener: str, sku: str) -> None:
    ops.bind()
    picky.RefusedSku.insert(listener=listener, sku=sku).on_conflict_ignore().execute()


def accept(ops: OpsInstallation, listener: str, sku: str) -> None:
    ops.bind()
    picky.RefusedSku.delete().where(
        (picky.RefusedSku.listener == listener) & (picky.RefusedSku.sku == sku)
    ).execute()


def letter_of(ops: OpsInstallation, listener: str, sku: str) -> DeadLetter | None:
    ops.bind()
    return DeadLetter.get_or_none((DeadLetter.listener == listener) & (DeadLetter.stream == sku))


def wait_for_letter(ops: OpsInstallation, listener: str, sku: str) -> DeadLetter:
    def stored() -> DeadLetter:
        letter = letter_of(ops, listener, sku)
        assert letter is not None, f"no dead letter of {listener} for {sku} yet"
        return letter

    return assert_eventually(stored)


def held_positions(ops: OpsInstallation, listener: str, sku: str) -> list[int]:
    ops.bind()
    Held = listener_state.HeldMessage
    query = Held.select().where((Held.listener == listener) & (Held.stream == sku))
    return sorted(int(row.position) for row in query)


def wait_for_held(ops: OpsInstallation, listener: str, sku: str, positions: list[int]) -> None:
    def held() -> None:
        assert held_positions(ops, listener, sku) == positions

    assert_eventually(held)


def applied_quantities(ops: OpsInstallation, listener: str, sku: str) -> list[int]:
    ops.bind()
    Applied = picky.PickyApplied
    query = Applied.select().where((Applied.listener == listener) & (Applied.sku == sku))
    return [int(row.quantity) for row in query.order_by(Applied.id)]


def applied_position(ops: OpsInstallation, listener: str, sku: str) -> int:
    ops.bind()
    Position = listener_state.StreamPosition
    row = Position.get_or_none((Position.listener == listener) & (Position.stream == sku))
    return 0 if row is None else int(row.position)
