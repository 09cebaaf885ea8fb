"""Latency from a command's 200 answer to each listener having applied its event.

Method: only in this scenario's database, a trigger on
messaging_stream_positions calls ``pg_notify('bench_applied', 'listener sku
position')`` whenever a listener's position for a SKU advances. PostgreSQL
delivers a notification when the listener's transaction commits, so a
watcher thread here, LISTENing on its own connection and blocked in
select(), timestamps each commit as it becomes visible. The load generator
timestamps each 200 answer as it reads it. Both use CLOCK_MONOTONIC, which
is one clock for every process of the machine. A command's latency for a
listener is the first notification of that listener and SKU at or past the
command's position, minus its answer time. A second trigger, on the outbox's
DELETE, times the drain's commit of the event's publication the same way
(pseudo-listener "drain"). And a consumer here, on a queue of its own bound
to the service's exchange with ``#`` (not durable, so RabbitMQ writes
nothing of it and the drain's confirms do not wait for it), timestamps
each event as RabbitMQ delivers it (pseudo-listener "routed"): the split
of a listener's latency into the drain's publication and the rest.

Resolution: the notification path (commit, delivery to the watcher's socket,
select() wake-up) is measured before every run by sending probe
notifications from another connection and timing their arrival; its median
is reported, and is the floor of what this method can see.

Load: a fixed ``rate`` of commands per second for ``warmup`` + ``duration``
seconds, open loop, alternating increases and shipments over
``latency_skus`` SKUs in turn, so a SKU is touched once every skus/rate
seconds and its positions are known in advance. Before the load, a CHECKPOINT flushes what earlier
scenarios left for PostgreSQL to write. The commands of the first
``warmup`` seconds are not measured, as the other scenarios' warm-up: every
worker thread's first messages open its database connection and prepare its
statements, and the single probe command before the load reaches only one
worker process's consumer of each queue (measured: the first dozen
commands took 10-44 ms to reach the listeners of the other process, which
alone made the p99 of 1,000 commands).
"""

from __future__ import annotations

import bisect
import select
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import psutil
import psycopg2
import psycopg2.extensions
from tests.support.services import connect
from tests.support.waiting import eventually

from .. import cpu, infra
from ..context import Context
from ..cpu import CpuMeter
from ..loadgen import LoadRun
from ..service import SKU_PREFIX, ServiceUnderTest, installed

CHANNEL = "bench_applied"

TRIGGER = """
CREATE FUNCTION bench_notify_applied() RETURNS trigger AS $$
BEGIN
  -- Only an advance: the listener also locks its row by writing the same position.
  IF NEW.position > 0 AND (TG_OP = 'INSERT' OR NEW.position <> OLD.position) THEN
    PERFORM pg_notify('{channel}', NEW.listener || ' ' || NEW.stream || ' ' || NEW.position);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_applied AFTER INSERT OR UPDATE ON {table}
  FOR EACH ROW EXECUTE FUNCTION bench_notify_applied();
CREATE FUNCTION bench_notify_published() RETURNS trigger AS $$
BEGIN
  IF OLD.stream IS NOT NULL THEN
    PERFORM pg_notify('{channel}', '{drain} ' || OLD.stream || ' ' || OLD.position);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER bench_published AFTER DELETE ON {outbox}
  FOR EACH ROW EXECUTE FUNCTION bench_notify_published();
"""

#: The pseudo-listener whose "applied" is the drain deleting the event's outbox row.
DRAIN = "drain"
#: The pseudo-listener whose "applied" is RabbitMQ delivering the event to a probe queue.
ROUTED = "routed"


class AppliedWatcher:
    """LISTENs on the trigger's channel and timestamps every notification."""

    def __init__(self, database_url: str) -> None:
        self.connection = psycopg2.connect(database_url)
        self.connection.autocommit = True
        with self.connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        self.seen: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="applied-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.connection], [], [], 0.05)
            if not ready:
                continue
            self.connection.poll()
            now = time.monotonic()
            while self.connection.notifies:
                self.seen.append((now, self.connection.notifies.pop(0).payload))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.connection.close()


class RoutedWatcher:
    """Consumes every event of ``exchange`` on a transient queue of its own and
    timestamps each delivery into ``seen`` (the same list as an AppliedWatcher's)."""

    def __init__(
        self,
        broker_url: str,
        exchange: str,
        seen: list[tuple[float, str]],
        stream_position: Callable[[Any, bytes], tuple[str, int] | None] | None = None,
    ) -> None:
        """``stream_position(properties, body)``: an event's SKU and position;
        by default the service's headers say them."""
        self.seen = seen
        self.stream_position = stream_position or _from_headers
        self.connection = connect(broker_url)
        channel = self.connection.channel()
        queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(queue, exchange, routing_key="#")
        channel.basic_consume(queue, self._on_message, auto_ack=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="routed-watcher", daemon=True)
        self._thread.start()

    def _on_message(self, channel: object, method: object, properties: Any, body: bytes) -> None:
        now = time.monotonic()
        event = self.stream_position(properties, body)
        if event is not None:
            self.seen.append((now, f"{ROUTED} {event[0]} {event[1]}"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.connection.process_data_events(time_limit=0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.connection.close()


def _from_headers(properties: Any, body: bytes) -> tuple[str, int] | None:
    headers = properties.headers or {}
    return (headers["stream"], headers["position"]) if "stream" in headers else None


def calibrate(database_url: str, watcher: AppliedWatcher, probes: int = 50) -> float:
    """Median ms from sending a probe notification to the watcher seeing it."""
    sender = psycopg2.connect(database_url)
    sender.autocommit = True
    sent: dict[str, float] = {}
    try:
        with sender.cursor() as cursor:
            for index in range(probes):
                payload = f"probe {index}"
                # Timed from before the statement: an upper bound, as the
                # notification may arrive before execute() returns.
                sent[payload] = time.monotonic()
                cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                time.sleep(0.005)
    finally:
        sender.close()
    time.sleep(0.2)
    delays = [(at - sent[p]) * 1000 for at, p in watcher.seen if p in sent]
    watcher.seen = [(at, p) for at, p in watcher.seen if p not in sent]
    if len(delays) != probes:
        raise RuntimeError(f"calibration: {len(delays)} of {probes} probes arrived")
    return statistics.median(delays)


def run(ctx: Context) -> dict[str, float]:
    """The default worker layout (``-t {worker_threads}``)."""
    return measure(ctx, threads=None, prefix="latency")


def run_few_threads(ctx: Context) -> dict[str, float]:
    """The same with ``-t {latency_worker_threads}``: listener batches leave
    little for more threads to do, and every idle thread is one more to wake
    and schedule on 2 cores."""
    return measure(ctx, threads=ctx.knobs.latency_worker_threads, prefix="latency_t")


def measure(
    ctx: Context,
    *,
    threads: int | None,
    prefix: str,
    drain_first: bool = False,
    **options: Any,
) -> dict[str, float]:
    """``options``: the installation's (``service.installed``: another template
    than the seeded one, a broker, settings); ``drain_first``: start the
    workers, and wait until they applied what the template's outbox holds,
    before the trigger and the load."""
    knobs = ctx.knobs
    with installed(ctx, prefix, **options) as service:
        if drain_first:
            service.start_workers(threads=threads)
            service.wait_all_applied(timeout=900)
        infra.execute(
            ctx.postgres,
            service.name,
            TRIGGER.format(
                channel=CHANNEL,
                drain=DRAIN,
                table=service.positions_table,
                outbox=service.outbox_table,
            ),
        )
        watcher = AppliedWatcher(service.database_url)
        try:
            resolution_ms = calibrate(service.database_url, watcher)
            port = service.start_api()
            if not service.workers:
                service.start_workers(threads=threads)
            service.probe()
            settle(ctx, service.name)
            routed = RoutedWatcher(service.installation.broker_url, service.exchange, watcher.seen)
            try:
                # The seeded template's increase was each SKU's first position.
                result = paced_load(ctx, port, start_position=1, parts=service.cpu_parts())
            finally:
                routed.close()
            service.wait_all_applied(timeout=knobs.latency_settle)
            # The drain deletes its rows after RabbitMQ took them, so its commit
            # may come after the listeners' commits: wait for it too.
            eventually(_outbox_emptied(service), timeout=knobs.latency_settle, interval=0.1)
            time.sleep(0.2)  # the last notifications
            seen = list(watcher.seen)
        finally:
            watcher.close()
    figures = latencies(result["records"], seen, (DRAIN, ROUTED, *ctx.routing.listeners))
    figures["latency.resolution_ms"] = resolution_ms
    figures["latency.late_sends"] = float(result["late_sends"])
    figures["latency.failures"] = float(sum(result["failures"].values()))
    figures["latency.http_p50_ms"] = statistics.median(r[3] for r in result["records"]) * 1000
    figures["latency.busy_pct"] = result["busy_pct"]
    for part, ms in result["cpu_ms"].items():
        figures[f"latency.cpu_ms.{part}"] = ms
    return {prefix + name.removeprefix("latency"): value for name, value in figures.items()}


def _outbox_emptied(service: ServiceUnderTest) -> Callable[[], None]:
    def emptied() -> None:
        rows = service.outbox_rows()
        assert rows == 0, f"{service.name}: {rows} rows still in the outbox"

    return emptied


def settle(ctx: Context, database: str) -> None:
    """Flush what earlier scenarios left dirty in PostgreSQL (CHECKPOINT) before
    a latency load, so that their checkpoint does not write during it: the
    end-to-end scenario just before leaves hundreds of MB of WAL behind.
    The same for the service and its floor."""
    infra.execute(ctx.postgres, database, "CHECKPOINT")


def paced_load(
    ctx: Context, port: int, *, start_position: int, parts: dict[str, cpu.PidSource]
) -> dict:
    """The latency load on ``port``: the load generator's result, once it is
    done, with ``busy_pct``: how busy the machine's cores were meanwhile (100
    is every core all the time), and ``cpu_ms``: the CPU milliseconds of each
    of ``parts`` (and of the machine) per command answered. A fixed rate's
    latency is low only while the machine has cores to spare; the service
    and its floor on the same machine are compared by these too."""
    knobs = ctx.knobs
    meter = CpuMeter(parts)
    meter.start()
    started = time.monotonic()
    result = LoadRun(
        {
            "mode": "paced",
            "port": port,
            "sku_prefix": SKU_PREFIX,
            "skus": knobs.latency_skus,
            # Enough that slow answers never hold back the schedule.
            "connections": 32,
            "rate": knobs.latency_rate,
            "warmup": knobs.latency_warmup,
            "duration": knobs.latency_duration,
            "start_position": start_position,
        },
        timeout=knobs.latency_warmup + knobs.latency_duration + 60,
    ).result()
    used = meter.stop()
    cores = psutil.cpu_count() or 1
    busy = used["machine"] / (time.monotonic() - started) / cores
    # The window holds the warm-up's commands too: divide by every answer.
    per_command = {
        part: 1000 * seconds / max(1, result["answered"]) for part, seconds in used.items()
    }
    return {**result, "busy_pct": 100 * busy, "cpu_ms": per_command}


def latencies(
    records: list[list], seen: list[tuple[float, str]], listeners: tuple[str, ...]
) -> dict[str, float]:
    """p50/p99 per listener (and the worst listener's) from answers and notifications."""
    arrivals: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for at, payload in seen:
        listener, sku, position = payload.split(" ")
        arrivals[(listener, sku)].append((int(position), at))
    # Per listener and SKU: the positions in order, and for each the earliest
    # time any position at or past it was seen. (A listener's commits of one
    # SKU come in order, its row lock serialises them; deliveries to the
    # probe queue of two drains need not.)
    applied: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for key, seen_at in arrivals.items():
        seen_at.sort()
        earliest = [at for _, at in seen_at]
        for index in range(len(earliest) - 2, -1, -1):
            earliest[index] = min(earliest[index], earliest[index + 1])
        applied[key] = ([position for position, _ in seen_at], earliest)
    figures: dict[str, float] = {}
    for listener in listeners:
        delays = []
        for sku, position, answered, _ in records:
            positions, times = applied.get((listener, sku), ([], []))
            index = bisect.bisect_left(positions, position)
            if index == len(positions):
                raise RuntimeError(f"{listener} never applied {sku} position {position}")
            delays.append((times[index] - answered) * 1000)
        delays.sort()
        figures[f"latency.{listener}.p50_ms"] = _percentile(delays, 0.50)
        figures[f"latency.{listener}.p99_ms"] = _percentile(delays, 0.99)
    for stat in ("p50", "p99"):
        figures[f"latency.worst.{stat}_ms"] = max(
            figures[f"latency.{name}.{stat}_ms"]
            for name in listeners
            if name not in (DRAIN, ROUTED)
        )
    return figures


def _percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))]
