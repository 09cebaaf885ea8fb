"""The service once its tables have grown, against the bare chain of the same run.

- **latency after a burst**: ``knobs.burst`` commands written with the
  workers stopped (``bench.fill_outbox``, as the backlog's, over SKUs of their
  own), then the workers started and the burst drained, then at once the
  latency load and method of ``latency.py``;
- **latency with grown tables**: the seeded template plus ``knobs.grown_skus``
  SKUs in every table the commands and listeners keep (stock, both listeners'
  products, three listeners' positions, the heads, one archived event each),
  written by ``generate_series`` and left with the statistics the bulk load
  left (no ANALYZE; the machine's autovacuum may be off);
- **sustained commands/s**: closed-loop clients (``e2e_connections``) for
  ``e2e_warmup`` + ``e2e_window`` s; the figure is the rate at which the
  slowest listener applied commands over the window, for the service
  (positions) and for the bare chain (``bench_bare_applied``), the chain
  paying a transaction and a confirm per delivery.

Each template is written once per suite run, before its first run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg2
from tests.db.large_tables import drop_indexes

from ..baselines import bare_chain as chain
from ..context import Context, log
from ..loadgen import LoadRun
from ..service import PRODUCT_STOCK, STREAM_POSITIONS, installed, qualified
from .backlog import Templates
from .baselines import bare_chain_running
from .latency import measure as latency_run
from .pipeline import closed_loop

GROWN_PREFIX = "grown"


class GrownTemplates:
    """The burst's and the grown tables' templates of this suite run (built on first use)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.burst: str | None = None
        self.grown: str | None = None

    def burst_template(self) -> str:
        if self.burst is None:
            ctx, started = self.ctx, time.monotonic()
            log(f"writing a burst of {ctx.knobs.burst:,} commands ...")
            name = f"{ctx.tag}_tpl_burst"
            url = ctx.postgres.create(name, template=ctx.seeded_template)
            Templates(ctx).fill(url, 0, ctx.knobs.burst)
            self.burst = name
            log(f"  done in {time.monotonic() - started:.0f} s")
        return self.burst

    def grown_template(self) -> str:
        if self.grown is None:
            ctx, started = self.ctx, time.monotonic()
            log(f"growing the tables by {ctx.knobs.grown_skus:,} SKUs ...")
            name = f"{ctx.tag}_tpl_grown"
            ctx.postgres.create(name, template=ctx.seeded_template)
            connection = ctx.postgres.connect(name)
            try:
                with connection.cursor() as cursor:
                    grow(connection, cursor, ctx.knobs.grown_skus, ctx.routing.listeners)
            finally:
                connection.close()
            self.grown = name
            log(f"  done in {time.monotonic() - started:.0f} s")
        return self.grown


def grow(
    connection: psycopg2.extensions.connection,
    cursor: psycopg2.extensions.cursor,
    skus: int,
    listeners: tuple[str, ...],
) -> None:
    """``skus`` SKUs more, each with one applied increase, in every table."""
    sku = f"'{GROWN_PREFIX}' || lpad(s::text, 7, '0')"
    series = f"generate_series(1, {skus}) s"
    names = ", ".join(f"'{listener}'" for listener in listeners)
    increased = "Warehouse.Events.ProductQuantityIncreased"
    rows = {
        PRODUCT_STOCK: f"SELECT {sku}, 1000000, 1 FROM {series}",
        "products_view_products": f"SELECT {sku}, 1000000 FROM {series}",
        "low_quantity_notifier_products": f"SELECT {sku}, 1000000 FROM {series}",
        STREAM_POSITIONS: f"SELECT l, {sku}, 1, 0 FROM unnest(ARRAY[{names}]) l, {series}",
        "messaging_stream_heads": f"SELECT {sku}, '{increased}.v1', 1 FROM {series}",
        "messaging_archive (message_id, type, schema_version, payload, stream, position, "
        "archived_at)": "SELECT '00000000-0000-4000-8000-' || lpad(s::text, 12, '0'), "
        f"'{increased}', 1, '\\x00'::bytea, {sku}, 1, now() AT TIME ZONE 'UTC' FROM {series}",
    }
    cursor.execute("SET synchronous_commit TO off; SET maintenance_work_mem = '256MB'")
    for target, select in rows.items():
        table, _, columns = target.partition(" ")
        name = qualified(connection, table)
        cursor.execute("BEGIN")
        rebuild = drop_indexes(cursor, name)
        cursor.execute(f"INSERT INTO {name} {columns} {select}")
        for statement in rebuild:
            cursor.execute(statement)
        cursor.execute("COMMIT")


def after_burst(ctx: Context, templates: GrownTemplates) -> dict[str, float]:
    return latency_run(
        ctx, threads=None, prefix="burst", template=templates.burst_template(), drain_first=True
    )


def grown_tables(ctx: Context, templates: GrownTemplates) -> dict[str, float]:
    return latency_run(ctx, threads=None, prefix="grown", template=templates.grown_template())


def sustained(ctx: Context) -> dict[str, float]:
    """The service: the slowest listener's applied commands/s under a closed loop."""
    knobs = ctx.knobs
    with installed(ctx, "sustained") as service:
        port = service.start_api()
        service.start_workers()
        service.probe()
        rate = _applied_rate(
            lambda: min(service.applied().values()),
            closed_loop(ctx, port, warmup=knobs.e2e_warmup, window=knobs.e2e_window),
            knobs.e2e_warmup,
            knobs.e2e_window,
            service.require_alive,
        )
    return {"sustained.cps": rate}


def sustained_chain(ctx: Context) -> dict[str, float]:
    """The bare chain: the same, its slowest bare listener's applied commands/s."""
    knobs = ctx.knobs
    name = f"{ctx.tag}_bare_sustained"
    listeners = chain.listener_names(len(ctx.routing.listeners))
    with bare_chain_running(ctx, name) as (port, watcher, _, _parts):
        watcher.close()  # counted from the table: its notifications are not needed
        connection = ctx.postgres.connect(name)
        try:

            def slowest() -> int:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT listener, SUM(position) FROM bench_bare_applied GROUP BY listener"
                    )
                    found = {listener: int(total) for listener, total in cursor.fetchall()}
                return min(found.get(listener, 0) for listener in listeners)

            rate = _applied_rate(
                slowest,
                closed_loop(ctx, port, warmup=knobs.e2e_warmup, window=knobs.e2e_window),
                knobs.e2e_warmup,
                knobs.e2e_window,
                lambda: None,
            )
        finally:
            connection.close()
    return {"sustained.chain_cps": rate}


def _applied_rate(
    slowest: Callable[[], int],
    load: LoadRun,
    warmup: float,
    window: float,
    require_alive: Callable[[], None],
) -> float:
    time.sleep(warmup)
    first, first_at = slowest(), time.monotonic()
    time.sleep(window)
    last, last_at = slowest(), time.monotonic()
    result = load.result()
    require_alive()
    if set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"sustained load: answers other than 200: {result['statuses']}")
    return (last - first) / (last_at - first_at)
