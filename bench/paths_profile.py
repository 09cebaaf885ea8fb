"""A command's path and a delivery's path, one after another in one thread, by pyinstrument.

``python -m bench.paths_profile COMMANDS LOG_FILE``, run by ``bench
--profile`` (``profile_paths`` below) with the service's environment over a
freshly migrated database, prints its report on stdout. The service's log lines go to
LOG_FILE, as the services' lines go to their files in the other scenarios
(through a pipe to the suite, each write would wait for the suite to read it).

py-spy (bench/profiling.py) samples the API and the workers from outside,
under load, with every process and thread of the machine in the way. This
is its complement: pyinstrument's call tree of the same code run in one
thread of one process, against PostgreSQL, with nothing else running. Its
times are wall times, so they include the database round trips:

1. COMMANDS REST commands through the service's Falcon app (the same app
   gunicorn serves, called in-process: no HTTP socket, no gunicorn), over
   ``SKUS`` SKUs: each SKU's first command increases it by a large stock,
   then shipments of 1 and increases of 1 alternate, so no shipment fails
   and none reaches the notifier's threshold;
2. the events they wrote, each applied by every listener that
   listeners.yaml binds to it, as a listener actor applies one delivery
   (``runtime.engine.apply`` of one envelope: decoding, the claim, the
   handler, the commit, the metrics and the log line; no pika, no
   Dramatiq). Nothing drains the outbox: its rows are read directly.

The first ``WARMUP`` commands and their deliveries run before the profiler
starts: they open the connection and prepare the statements.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import falcon.testing
from pyinstrument import Profiler

from cqrs_warehouse import logs
from cqrs_warehouse.messaging import context
from cqrs_warehouse.messaging.envelope import envelope_from_record
from cqrs_warehouse.messaging.listening import Outcome, engine
from cqrs_warehouse.messaging.message import routing_key_for
from cqrs_warehouse.messaging.storage.models import OutboxRecord
from cqrs_warehouse.runtime import build
from cqrs_warehouse.web import create_app

from .loadgen import SEED_QUANTITY, sku_name

if TYPE_CHECKING:
    from .context import Context

SKUS = 100
WARMUP = 200
#: pyinstrument's sampling interval, in seconds.
INTERVAL = 0.001


def main(commands: int, log_file: str) -> str:
    with open(log_file, "ab") as log:
        os.dup2(log.fileno(), sys.stderr.fileno())
    logs.configure()
    runtime = build()
    client = falcon.testing.TestClient(create_app(runtime))

    def command(index: int) -> None:
        sku = sku_name("paths", index % SKUS)
        if index < SKUS:
            action, quantity = "increase_quantity", SEED_QUANTITY
        else:
            action = "ship_quantity" if (index // SKUS) % 2 else "increase_quantity"
            quantity = 1
        path = f"/warehouse/products/{sku}/{action}"
        result = client.simulate_post(path, json={"quantity": quantity})
        if result.status_code != 200:
            raise RuntimeError(f"POST {path}: {result.status_code} {result.text}")

    deliveries = 0

    def deliver(records: list[Any]) -> None:
        nonlocal deliveries
        for record in records:
            # Signed as the drain signs what it publishes: the engine verifies it.
            envelope = runtime.message_keys.signed(envelope_from_record(record))
            key = routing_key_for(record.type, record.schema_version)
            for spec in runtime.routing.listeners_for(key):
                [outcome] = runtime.engine.apply(spec, [envelope], attempt=1)
                if outcome is not Outcome.APPLIED:
                    raise RuntimeError(f"{spec.name}: {record.message_id} was {outcome}")
                deliveries += 1

    def outbox_rows(after: int) -> list[Any]:
        with runtime.database.connection_context():
            return list(
                OutboxRecord.select().where(OutboxRecord.id > after).order_by(OutboxRecord.id)
            )

    for index in range(WARMUP):
        command(index)
    warm = outbox_rows(0)
    deliver(warm)
    deliveries = 0

    commands_profiler = Profiler(interval=INTERVAL)
    started = time.perf_counter()
    commands_profiler.start()
    for index in range(WARMUP, WARMUP + commands):
        command(index)
    commands_profiler.stop()
    commands_seconds = time.perf_counter() - started

    records = outbox_rows(warm[-1].id)
    deliveries_profiler = Profiler(interval=INTERVAL)
    started = time.perf_counter()
    deliveries_profiler.start()
    deliver(records)
    deliveries_profiler.stop()
    deliveries_seconds = time.perf_counter() - started

    # pyinstrument's hook runs on every Python call and return, so code made
    # of many small calls weighs more in its trees than it does: one of the
    # listener's log lines, timed with and without it, says by how much.
    line_plain = _log_line_seconds(None)
    line_profiled = _log_line_seconds(Profiler(interval=INTERVAL))

    def tree(profiler: Profiler) -> str:
        return profiler.output_text(unicode=False, color=False, show_all=False).strip()

    return "\n".join(
        [
            f"{commands:,} commands through the Falcon app in {commands_seconds:.2f} s: "
            f"{1000 * commands_seconds / commands:.2f} ms each (wall time, one thread)",
            f"{deliveries:,} deliveries of their {len(records):,} events to "
            f"{len(runtime.routing.listeners)} listeners in {deliveries_seconds:.2f} s: "
            f"{1000 * deliveries_seconds / deliveries:.2f} ms each",
            f"pyinstrument {INTERVAL * 1e6:.0f} us interval; the first {WARMUP} commands and "
            "their deliveries ran before it started",
            "its hook runs on every Python call, so call-heavy code looks heavier than it is: "
            f"a listener's log line takes {line_plain * 1e6:.0f} us, "
            f"{line_profiled * 1e6:.0f} us under the profiler (database waits are not inflated)",
            "",
            "one command's path (REST through the Falcon app)",
            "================================================",
            tree(commands_profiler),
            "",
            "one delivery's path (runtime.engine.apply)",
            "==========================================",
            tree(deliveries_profiler),
        ]
    )


def _log_line_seconds(profiler: Profiler | None, lines: int = 2_000) -> float:
    """The time of one listener log line, as the engine logs it (to the log file)."""
    logger = engine.logger
    with context.bound(correlation_id="c", message_id="m", message_type="t", listener="l"):
        if profiler is not None:
            profiler.start()
        started = time.perf_counter()
        for _ in range(lines):
            logger.info("listener %s: %s (attempt %d)", "l", "applied", 1)
        seconds = (time.perf_counter() - started) / lines
        if profiler is not None:
            profiler.stop()
    return seconds


def profile_paths(ctx: Context, commands: int = 2_000) -> str:
    """This module, run in its own process over a migrated database of its own
    with the service's environment; its report."""
    from tests.support.processes import ROOT, run_to_exit

    from .service import installed

    with installed(ctx, "profile_paths", template=ctx.migrated_template) as service:
        log_file = service.installation.workdir / "paths_profile.log"
        finished = run_to_exit(
            [sys.executable, "-m", "bench.paths_profile", str(commands), str(log_file)],
            env=service.installation.env,
            cwd=ROOT,
            timeout=600,
        )
    if finished.returncode != 0:
        raise RuntimeError(f"bench.paths_profile failed:\n{finished.stderr[-3000:]}")
    return finished.stdout.strip()


if __name__ == "__main__":
    print(main(int(sys.argv[1]), sys.argv[2]))
