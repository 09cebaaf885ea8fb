"""One installation of the service under test, run the way its README says.

A database of its own (a copy of a migrated template), a queue prefix of its
own, the API under ``gunicorn -c gunicorn.conf.py`` and the workers under
``dramatiq cqrs_warehouse.worker``. Progress is read from the database: per
listener, the sum over SKUs of the position it applied equals the number of
that listener's deliveries applied (every benchmark event has a position).
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence

import psycopg2.extensions

from . import infra
from .context import Context
from .http_load import seed_skus
from .processes import BIN, ROOT, Service, environment, free_port, run_helper, wait_for

#: The SKUs every load uses (``sku00000``...), seeded in the seeded template.
SKU_PREFIX = "sku"

# The tables the suite reads; the service may keep them in a schema per slice.
STREAM_POSITIONS = "messaging_stream_positions"
PRODUCT_STOCK = "warehouse_product_stock"
OUTBOX = "messaging_outbox"


def migrate(ctx: Context, database_url: str) -> None:
    """``cqrs-warehouse migrate`` on ``database_url``, as a user would run it."""
    env = environment(
        DATABASE_URL=database_url,
        BROKER_URL=ctx.broker_url,
        LISTENERS_CONFIG=str(ctx.routing.path),
        LOG_FORMAT="text",
    )
    run_helper([str(BIN / "cqrs-warehouse"), "migrate"], env=env, timeout=120)


def qualified(connection: psycopg2.extensions.connection, table: str) -> str:
    """``table`` as SQL, in whichever schema the migrations put it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = %s "
            "ORDER BY table_schema = 'public'",
            (table,),
        )
        row = cursor.fetchone()
    if row is None:
        raise RuntimeError(f"table {table} not found: did the migrations change its name?")
    return f'"{row[0]}"."{table}"'


class Installation:
    """``template``: the database to copy (default: the seeded one, else the migrated
    one); ``keep_database``: leave the database in place on close (to copy it)."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        template: str | None = None,
        keep_database: bool = False,
    ) -> None:
        self.ctx = ctx
        self.name = f"{ctx.tag}_{name}"
        self.prefix = f"{self.name}_"
        self.keep_database = keep_database
        self.database_url = ctx.postgres.create(
            self.name, template=template or ctx.seeded_template or ctx.migrated_template
        )
        self.services: list[Service] = []
        self.api: Service | None = None
        self.api_port = 0
        self.workers: list[Service] = []
        self.db = ctx.postgres.connect(self.name)
        self.positions_table = qualified(self.db, STREAM_POSITIONS)
        self.stock_table = qualified(self.db, PRODUCT_STOCK)
        self.outbox_table = qualified(self.db, OUTBOX)

    # --- processes -------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        knobs = self.ctx.knobs
        return environment(
            DATABASE_URL=self.database_url,
            BROKER_URL=self.ctx.broker_url,
            QUEUE_PREFIX=self.prefix,
            LISTENERS_CONFIG=str(self.ctx.routing.path),
            LOG_FORMAT="json",
            WEB_CONCURRENCY=str(knobs.web_concurrency),
            GUNICORN_THREADS=str(knobs.gunicorn_threads),
            # The workers keep Prometheus files per installation, in the temporary
            # folder by default and never removed: keep them with this run's logs.
            dramatiq_prom_db=str(self.ctx.log_dir / f"{self.name}-metrics"),
            **extra,
        )

    def start_api(self) -> int:
        port = free_port()
        api = Service.start(
            f"{self.name}_api",
            [
                str(BIN / "gunicorn"),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "-b",
                f"127.0.0.1:{port}",
            ],
            env=self.env(),
            log_dir=self.ctx.log_dir,
        )
        self.services.append(api)
        wait_until_serving(api, port)
        self.api, self.api_port = api, port
        return port

    def start_workers(
        self,
        *,
        processes: int | None = None,
        threads: int | None = None,
        queues: Sequence[str] = (),
        label: str = "workers",
    ) -> Service:
        """``dramatiq cqrs_warehouse.worker``; ``queues`` (unprefixed) limits what it reads."""
        knobs = self.ctx.knobs
        args = [
            str(BIN / "dramatiq"),
            "cqrs_warehouse.worker",
            "-p",
            str(processes or knobs.worker_processes),
            "-t",
            str(threads or knobs.worker_threads),
        ]
        if queues:
            args += ["--queues", *(f"{self.prefix}{q}" for q in queues)]
        workers = Service.start(
            f"{self.name}_{label}", args, env=self.env(), log_dir=self.ctx.log_dir
        )
        self.services.append(workers)
        self.workers.append(workers)
        return workers

    def require_alive(self) -> None:
        for service in self.services:
            service.require_alive()

    # --- progress, read from the database ---------------------------------

    def applied(self) -> dict[str, int]:
        """Deliveries each listener applied: the sum of its positions over all SKUs."""
        with self.db.cursor() as cursor:
            cursor.execute(
                f"SELECT listener, COALESCE(SUM(position), 0) FROM {self.positions_table} "
                "GROUP BY listener"
            )
            found = {listener: int(total) for listener, total in cursor.fetchall()}
        return {listener: found.get(listener, 0) for listener in self.ctx.routing.listeners}

    def committed_events(self) -> int:
        """Events the commands committed: the sum of every SKU's version."""
        with self.db.cursor() as cursor:
            cursor.execute(f"SELECT COALESCE(SUM(version), 0) FROM {self.stock_table}")
            return int(cursor.fetchone()[0])

    def outbox_rows(self) -> int:
        with self.db.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {self.outbox_table}")
            return int(cursor.fetchone()[0])

    def probe(self, *, timeout: float = 120) -> None:
        """One command through the API, waited for until every listener applied it: the
        API and the workers are up and consuming (run before a measuring window)."""
        assert self.api is not None
        status = post(self.api_port, f"/warehouse/products/{SKU_PREFIX}probe/increase_quantity")
        if status != 200:
            raise RuntimeError(f"{self.name}: the probe command got {status}")
        self.wait_all_applied(timeout=timeout)

    def wait_all_applied(self, *, timeout: float) -> None:
        """Until every listener applied every committed event (workers must be running)."""
        target = self.committed_events()

        def done() -> bool:
            self.require_alive()
            return all(count >= target for count in self.applied().values())

        wait_for(done, timeout=timeout, interval=0.2, what=f"{self.name}: all {target} applied")

    # --- teardown ---------------------------------------------------------

    def close(self) -> None:
        """Stop the processes, then delete the queues and the database, each even if
        an earlier step failed (the suite's final sweep is the last resort)."""
        try:
            for service in reversed(self.services):
                service.stop()
            self.services.clear()
            self.db.close()
        finally:
            try:
                infra.delete_queues(
                    infra.service_queue_names(self.prefix, self.ctx.routing.listeners),
                    [f"{self.prefix}{self.ctx.routing.exchange}"],
                    self.ctx.broker_url,
                )
            finally:
                if not self.keep_database:
                    self.ctx.postgres.drop(self.name)

    def __enter__(self) -> Installation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post(port: int, path: str, quantity: int = 1) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = json.dumps({"quantity": quantity})
        connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def build_seeded_template(ctx: Context) -> str:
    """A copy of the migrated database in which ``knobs.skus`` SKUs (``sku00000``...) got
    one large increase through the API, applied by every listener: the API, pipeline
    and latency runs start from it instead of seeding each time."""
    seeded = Installation(ctx, "seeded", template=ctx.migrated_template, keep_database=True)
    try:
        port = seeded.start_api()
        seed_skus(port, SKU_PREFIX, ctx.knobs.skus)
        seeded.start_workers()
        seeded.wait_all_applied(timeout=600)
    finally:
        seeded.close()
    return seeded.name


def wait_until_serving(service: Service, port: int, *, timeout: float = 60) -> None:
    """Until ``GET /livez`` (or any HTTP answer) comes back from ``port``."""

    def answers() -> bool:
        service.require_alive()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/livez")
            connection.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            connection.close()

    wait_for(answers, timeout=timeout, interval=0.2, what=f"{service.name} serving on {port}")
    time.sleep(0.2)  # let the other gunicorn workers finish booting too
