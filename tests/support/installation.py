"""One installation of the service, run the way its README says, for the tests
that need real processes and for the benchmarks.

A database of its own (migrated with ``cqrs-warehouse migrate``, or a copy of
a migrated template), a queue prefix of its own, a listeners.yaml in its
folder, and the processes: the API under ``gunicorn -c gunicorn.conf.py``,
the workers under ``dramatiq cqrs_warehouse.worker`` (or a test's own worker
module), the CLI. What the service wrote is read back in the test's own
process through a runtime on the same database (``runtime``).
"""

from __future__ import annotations

import contextlib
import signal
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Self

import psutil
import requests
import yaml

from cqrs_warehouse.runtime import Runtime
from cqrs_warehouse.settings import DEFAULT_SLICES, Settings

from .environment import SCHEMAS, service_env
from .processes import BIN, ROOT, Finished, Service, free_port, run_to_exit
from .services import BROKER_URL, Postgres, broker_names, delete_from_broker, unique_name
from .waiting import wait_for_http

GUNICORN_CONF = ROOT / "gunicorn.conf.py"
EXCHANGE = "messaging"

#: Listeners of the tests' recorders slice (tests/slices/recorders).
WATCHER = {
    "name": "watcher",
    "handler": "tests.slices.recorders.listeners:watch",
    "bindings": ["#"],
}
SHIPMENT_RECORDER = {
    "name": "shipped_recorder",
    "handler": "tests.slices.recorders.listeners:record_shipment",
    "bindings": ["Warehouse.Events.ProductQuantityShipped.*"],
}
RECORDERS = "tests.slices.recorders"


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


@dataclass(repr=False)
class Installation:
    name: str
    workdir: Path
    postgres: Postgres
    database_url: str
    queue_prefix: str
    listeners: list[dict[str, Any]]
    slices: tuple[str, ...]
    #: The environment every process of it runs with (its settings included).
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    services: list[Service] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<Installation {self.name} prefix={self.queue_prefix!r}>"

    @classmethod
    def create(
        cls,
        postgres: Postgres,
        workdir: Path,
        *,
        name: str = "it",
        listeners: Sequence[Mapping[str, Any]] | None = None,
        slices: Sequence[str] = (*DEFAULT_SLICES, RECORDERS),
        settings: Mapping[str, str | None] | None = None,
        template: str | None = None,
        database_name: str | None = None,
        queue_prefix: str | None = None,
        broker_url: str = BROKER_URL,
    ) -> Self:
        """A new database (a copy of ``template``, already migrated, else migrated
        now), a queue prefix and a listeners.yaml (default: the project's
        listeners and the watcher); no process runs yet."""
        workdir.mkdir(parents=True, exist_ok=True)
        database_url = postgres.create(database_name, template=template)
        prefix = queue_prefix or unique_name(name) + "."
        entries = [
            dict(e)
            for e in (listeners if listeners is not None else [*project_listeners(), WATCHER])
        ]
        config = write_listeners_config(workdir / "listeners.yaml", entries)
        env = service_env(
            {
                "DATABASE_URL": database_url,
                "BROKER_URL": broker_url,
                "LISTENERS_CONFIG": str(config),
                "QUEUE_PREFIX": prefix,
                "SLICES": ",".join(slices),
                "OUTBOX_SWEEP_INTERVAL": "0.5",
                **(settings or {}),
            }
        )
        installation = cls(
            name=name,
            workdir=workdir,
            postgres=postgres,
            database_url=database_url,
            queue_prefix=prefix,
            listeners=entries,
            slices=tuple(slices),
            env=env,
        )
        if template is None:
            migrated = installation.cli("migrate")
            if migrated.returncode != 0:
                raise RuntimeError(f"migrate failed:\n{migrated.output}")
        return installation

    # --- processes ------------------------------------------------------------

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str | None] = {}) -> Service:
        """Any process of this installation, with its environment (plus ``env``)."""
        runs = sum(1 for s in self.services if s.name.split("-")[0] == name)
        environment = {k: v for k, v in {**self.env, **env}.items() if v is not None}
        service = Service.start(
            f"{name}-{runs + 1}", args, env=environment, cwd=self.workdir, log_dir=self.workdir
        )
        self.services.append(service)
        return service

    def start_api(
        self,
        *,
        workers: int = 2,
        env: Mapping[str, str | None] = {},
        wait: bool = True,
    ) -> Service:
        """gunicorn, with a Prometheus folder of its own; returns once it is ready."""
        metrics = self.workdir / f"api-metrics-{len(self.services)}"
        metrics.mkdir()
        api = self.start(
            "gunicorn",
            [str(BIN / "gunicorn"), "-c", str(GUNICORN_CONF), "-b", f"127.0.0.1:{self.port}"],
            {"WEB_CONCURRENCY": str(workers), "PROMETHEUS_MULTIPROC_DIR": str(metrics), **env},
        )
        if wait:
            wait_for_http(self.base_url + "/readyz", [api])
        return api

    def start_workers(
        self,
        *,
        processes: int = 2,
        threads: int = 4,
        queues: Sequence[str] = (),
        module: str = "cqrs_warehouse.worker",
        env: Mapping[str, str | None] = {},
        wait: bool = True,
    ) -> Service:
        """``dramatiq MODULE -p N -t M`` with its metrics on ``metrics_port``;
        ``queues`` (unprefixed) limits what it reads. Returns once every worker
        process has booted (Dramatiq then serves the metrics)."""
        args = [str(BIN / "dramatiq"), module, "-p", str(processes), "-t", str(threads)]
        if queues:
            args += ["--queues", *(f"{self.queue_prefix}{q}" for q in queues)]
        workers = self.start(
            "dramatiq",
            args,
            {
                "dramatiq_prom_host": "127.0.0.1",
                "dramatiq_prom_port": str(self.metrics_port),
                "dramatiq_prom_db": str(self.workdir / "worker-metrics"),
                **env,
            },
        )
        if wait:
            wait_for_http(self.metrics_url, [workers], timeout=60)
        return workers

    def current(self, name: str) -> Service:
        """The last started process of that name (gunicorn, dramatiq...)."""
        return [s for s in self.services if s.name.split("-")[0] == name][-1]

    def worker_pids(self, workers: Service | None = None) -> list[int]:
        """The PIDs of dramatiq's worker processes (not its Prometheus fork): those
        that hold a connection to RabbitMQ."""
        workers = workers or self.current("dramatiq")
        amqp_ports = {urllib.parse.urlsplit(u).port or 5672 for u in self.broker_url.split(";")}
        pids = []
        for process in _descendants(workers.pid):
            with contextlib.suppress(psutil.Error):
                if any(
                    c.raddr and c.raddr.port in amqp_ports
                    for c in process.net_connections(kind="tcp")
                ):
                    pids.append(process.pid)
        return sorted(pids)

    def stop_workers(self, timeout: float = 60) -> int:
        """SIGTERM to dramatiq; its exit code once it stopped."""
        workers = self.current("dramatiq")
        workers.process.send_signal(signal.SIGTERM)
        code = workers.wait(timeout)
        workers.signal_group(signal.SIGKILL)
        return code

    def cli(self, *args: str, env: Mapping[str, str | None] = {}, timeout: float = 90) -> Finished:
        """``cqrs-warehouse ARGS``, to its exit."""
        environment = {k: v for k, v in {**self.env, **env}.items() if v is not None}
        return run_to_exit(
            [str(BIN / "cqrs-warehouse"), *args], env=environment, cwd=self.workdir, timeout=timeout
        )

    def logs(self) -> str:
        return "\n".join(
            f"----- {s.name} ({' '.join(s.args)}):\n{s.output()}" for s in self.services
        )

    def close(self, *, drop_database: bool = True) -> None:
        """Stop every process, then delete the broker's queues and the database,
        each even if an earlier step failed."""
        try:
            for service in reversed(self.services):
                service.terminate()
            if "runtime" in self.__dict__:
                with contextlib.suppress(Exception):
                    self.runtime.database.close()
        finally:
            try:
                delete_from_broker(
                    broker_names(self.queue_prefix, [e["name"] for e in self.listeners]),
                    [f"{self.queue_prefix}{EXCHANGE}"],
                    self.broker_url,
                )
            finally:
                if drop_database:
                    self.postgres.drop(self.database_url.rsplit("/", 1)[1])

    # --- HTTP -------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """Its RabbitMQ (the tests' one when it runs without: the embedded default)."""
        return self.env.get("BROKER_URL") or BROKER_URL

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/"

    def post(
        self, path: str, body: Any = None, *, raw: bytes | None = None, **kwargs: Any
    ) -> requests.Response:
        if raw is not None:
            kwargs.setdefault("headers", {"Content-Type": "application/json"})
            return requests.post(self.base_url + path, data=raw, timeout=10, **kwargs)
        return requests.post(self.base_url + path, json=body, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base_url + path, timeout=30, **kwargs)

    def increase(self, sku: str, quantity: Any, **kwargs: Any) -> requests.Response:
        return self.post(
            f"/warehouse/products/{sku}/increase_quantity", {"quantity": quantity}, **kwargs
        )

    def ship(self, sku: str, quantity: Any, **kwargs: Any) -> requests.Response:
        return self.post(
            f"/warehouse/products/{sku}/ship_quantity", {"quantity": quantity}, **kwargs
        )

    def products(self) -> list[dict[str, Any]]:
        response = self.get("/warehouse/products")
        assert response.status_code == 200, response.text
        return list(response.json())

    def api_metrics(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200, response.text
        return response.text

    def worker_metrics(self) -> str:
        response = requests.get(self.metrics_url, timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    # --- what the service wrote, read in this process ----------------------

    @cached_property
    def runtime(self) -> Runtime:
        """A runtime on this installation's database and settings (nothing runs)."""
        from cqrs_warehouse.runtime import build

        return build(
            Settings(
                database_url=self.database_url,
                listeners_config=self.env["LISTENERS_CONFIG"],
                schemas_dir=str(SCHEMAS),
                queue_prefix=self.queue_prefix,
                slices=self.slices,
                message_keys=Settings.from_env(
                    {"MESSAGE_KEY": self.env.get("MESSAGE_KEY", "")}
                ).message_keys,
            ),
            embedded=True,
        )

    @contextlib.contextmanager
    def reading(self) -> Iterator[Runtime]:
        """The models bound to this installation's database (another runtime of
        this process may have bound them elsewhere), in a connection."""
        runtime = self.runtime
        runtime.bind_models()
        with runtime.database.connection_context():
            yield runtime


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
