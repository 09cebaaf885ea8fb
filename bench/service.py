"""The service under test: an installation of tests/support with the suite's
settings, and its progress read from the database.

``tests.support.installation.Installation`` makes it as the tests do: a
database of its own (here a copy of one of the run's templates), a queue
prefix of its own, a listeners.yaml in its folder (the entries of the
routing file the suite runs with), the API under ``gunicorn -c
gunicorn.conf.py`` and the workers under ``dramatiq cqrs_warehouse.worker``,
each process in a group of its own. The suite's settings on top: its names
start with the run's tag, its logs are JSON lines in the run's log folder,
the process layout is the knobs', and the service's own defaults otherwise
(the tests' shorter outbox sweep is left out).

Progress is read from the database: per listener, the sum over SKUs of the
position it applied equals the number of that listener's deliveries applied
(every benchmark event has a position).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psycopg2.extensions
from tests.support.installation import EXCHANGE, Installation
from tests.support.processes import Service
from tests.support.waiting import eventually

from cqrs_warehouse.settings import DEFAULT_SLICES

from . import cpu
from .context import Context
from .loadgen import seed_skus

#: The SKUs every load uses (``sku00000``...), seeded in the seeded template.
SKU_PREFIX = "sku"

# The tables the suite reads; the service may keep them in a schema per slice.
STREAM_POSITIONS = "messaging_stream_positions"
PRODUCT_STOCK = "warehouse_product_stock"
OUTBOX = "messaging_outbox"


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


class ServiceUnderTest:
    """One installation of the run (``installed``), and what the scenarios read of it."""

    def __init__(self, ctx: Context, installation: Installation) -> None:
        self.ctx = ctx
        self.installation = installation
        self.name = installation.database_url.rsplit("/", 1)[1]  # its database
        self.exchange = f"{installation.queue_prefix}{EXCHANGE}"
        self.api: Service | None = None
        self.workers: list[Service] = []
        self.db = ctx.postgres.connect(self.name)
        self.positions_table = qualified(self.db, STREAM_POSITIONS)
        self.stock_table = qualified(self.db, PRODUCT_STOCK)
        self.outbox_table = qualified(self.db, OUTBOX)

    @property
    def database_url(self) -> str:
        return self.installation.database_url

    # --- processes -------------------------------------------------------

    def start_api(self) -> int:
        """gunicorn with the knobs' workers and threads; its port, once it is ready."""
        self.api = self.installation.start_api(workers=self.ctx.knobs.web_concurrency)
        return self.installation.port

    def cpu_parts(self) -> dict[str, cpu.PidSource]:
        """Its processes by part, for a ``cpu.CpuMeter``: the API, the workers, the
        backends connected to its database, and RabbitMQ's VM (which other users
        of the broker count in)."""
        assert self.api is not None
        workers = [cpu.tree(w.pid) for w in self.workers]
        return {
            "api": cpu.tree(self.api.pid),
            "workers": lambda: [pid for source in workers for pid in source()],
            "postgres": cpu.postgres_backends(self.db, self.name),
            "rabbitmq": cpu.by_name("beam.smp"),
        }

    def start_workers(
        self,
        *,
        processes: int | None = None,
        threads: int | None = None,
        queues: Sequence[str] = (),
    ) -> Service:
        """``dramatiq cqrs_warehouse.worker`` (the knobs' layout unless given);
        ``queues`` (unprefixed) limits what it reads. Returns once it is started,
        not waiting for its metrics server (the suite reads none): the probe,
        or a scenario's own progress, tells when it consumes."""
        knobs = self.ctx.knobs
        workers = self.installation.start_workers(
            processes=processes or knobs.worker_processes,
            threads=threads or knobs.worker_threads,
            queues=queues,
            wait=False,
        )
        self.workers.append(workers)
        return workers

    def require_alive(self) -> None:
        for service in self.installation.services:
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
        response = self.installation.increase(f"{SKU_PREFIX}probe", 1)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: the probe command got {response.status_code}")
        self.wait_all_applied(timeout=timeout)

    def wait_all_applied(self, *, timeout: float) -> None:
        """Until every listener applied every committed event (workers must be running)."""
        target = self.committed_events()

        def done() -> None:
            self.require_alive()
            applied = self.applied()
            assert all(count >= target for count in applied.values()), (
                f"{self.name}: not all {target} events applied yet: {applied}"
            )

        eventually(done, timeout=timeout, interval=0.2)


@contextlib.contextmanager
def installed(
    ctx: Context,
    name: str,
    *,
    template: str | None = None,
    migrate: bool = False,
    keep_database: bool = False,
    broker_url: str | None = None,
    settings: Mapping[str, str] = {},
) -> Iterator[ServiceUnderTest]:
    """An installation named ``{tag}_{name}`` (database) and ``{tag}_{name}_`` (queues),
    a copy of ``template`` (default: the seeded template, else the migrated one),
    or migrated now if ``migrate``; stopped and removed on the way out, its
    database kept if ``keep_database`` (to copy it). ``broker_url`` (default the
    run's) and ``settings``: its broker and more of its environment (QUEUE_TYPE)."""
    if not migrate:
        template = template or ctx.seeded_template or ctx.migrated_template
    installation = Installation.create(
        ctx.postgres,
        Path(tempfile.mkdtemp(prefix=f"{name}_", dir=ctx.log_dir)),
        name=name,
        listeners=ctx.routing.entries,
        slices=DEFAULT_SLICES,
        settings={
            "LOG_FORMAT": "json",
            "GUNICORN_THREADS": str(ctx.knobs.gunicorn_threads),
            "OUTBOX_SWEEP_INTERVAL": None,  # the service's default, not the tests'
            **settings,
        },
        template=template,
        database_name=f"{ctx.tag}_{name}",
        queue_prefix=f"{ctx.tag}_{name}_",
        broker_url=broker_url or ctx.broker_url,
    )
    ctx.installations.append(installation)
    try:
        service = ServiceUnderTest(ctx, installation)
        try:
            yield service
        finally:
            service.db.close()
    finally:
        ctx.installations.remove(installation)
        installation.close(drop_database=not keep_database)


def build_migrated_template(ctx: Context) -> str:
    """An empty database migrated by ``cqrs-warehouse migrate``, as a user would run it."""
    with installed(ctx, "migrated", migrate=True, keep_database=True) as migrated:
        return migrated.name


def build_seeded_template(ctx: Context) -> str:
    """A copy of the migrated database in which ``knobs.skus`` SKUs (``sku00000``...) got
    one large increase through the API, applied by every listener: the API, pipeline
    and latency runs start from it instead of seeding each time."""
    with installed(ctx, "seeded", template=ctx.migrated_template, keep_database=True) as seeded:
        port = seeded.start_api()
        seed_skus(port, SKU_PREFIX, ctx.knobs.skus)
        seeded.start_workers()
        seeded.wait_all_applied(timeout=600)
        return seeded.name
