"""What each figure is called, its unit, its same-run baseline and its target,
and how each is measured (``method``, the section of RESULTS.md).

Scenarios return figures by key; this is the one place that says how they
are reported. A ratio is the service figure's median over its baseline's
median, both from the same suite run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from .knobs import Knobs

#: The parts whose CPU per command a latency load reports (``latency.paced_load``);
#: the floor's workers are its relay and its bare listeners.
LATENCY_CPU_PARTS = ("api", "workers", "postgres", "rabbitmq", "machine")


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    baseline: str | None = None  # key of the baseline figure for the ratio
    target: str | None = None  # the target as the lead states it
    check: Callable[[float, float | None], bool] | None = None  # (median, ratio) -> met
    digits: int = 0


def at_least_ratio(minimum: float) -> Callable[[float, float | None], bool]:
    return lambda value, ratio: ratio is not None and ratio >= minimum


def at_most_ratio(maximum: float) -> Callable[[float, float | None], bool]:
    return lambda value, ratio: ratio is not None and ratio <= maximum


def at_most(maximum: float) -> Callable[[float, float | None], bool]:
    return lambda value, ratio: value <= maximum


def figures(
    listeners: tuple[str, ...], small: int, large: int, few_threads: int = 2
) -> list[Figure]:
    """Every reported figure, in table order; ``small``/``large`` are the backlog sizes,
    ``few_threads`` the worker threads of the second latency layout."""
    rows = [
        Figure("amqp.per_message", "Raw AMQP publish, confirm per message", "msg/s"),
        Figure("amqp.batched", "Raw AMQP publish, confirms per batch of 500", "msg/s"),
        Figure("amqp.tx_batched", "Raw AMQP publish, one transaction per batch of 500", "msg/s"),
        Figure("bare_falcon.cps", "Bare Falcon+PG: insert+commit per POST", "req/s"),
        Figure("bare_actor.dps", "Bare Dramatiq+PG actor: update+commit per msg", "msg/s"),
        *(
            Figure(
                f"bare_chain.{stat}_ms",
                f"Bare chain latency @100 cmd/s (floor), slowest of its listeners, {stat}",
                "ms",
                digits=1,
            )
            for stat in ("p50", "p99")
        ),
        *(
            Figure(
                f"bare_chain.routed.{stat}_ms",
                f"  bare chain: 200 -> delivered by RabbitMQ (a probe queue), {stat}",
                "ms",
                digits=1,
            )
            for stat in ("p50", "p99")
        ),
        Figure(
            "api.cps",
            "Service: commands/s through the REST API",
            "cmd/s",
            baseline="bare_falcon.cps",
            target=">= 0.6x bare Falcon+PG",
            check=at_least_ratio(0.6),
        ),
        Figure("api.p99_ms", "  API answer time p99 under that load", "ms", digits=1),
        Figure(
            "e2e.dps",
            "Service: sustained deliveries/s end to end (2 worker procs)",
            "deliv/s",
            baseline="bare_actor.dps",
            target=">= 0.5x bare Dramatiq+PG",
            check=at_least_ratio(0.5),
        ),
        Figure("e2e.cps", "  commands/s accepted meanwhile", "cmd/s"),
        Figure("e2e.lag", "  events not yet applied at the window's end", "events"),
        Figure(
            "e2e.lag_growth",
            "  growth of that lag (> 0: listeners are the bound)",
            "events/s",
            digits=1,
        ),
    ]
    for stat in ("p50", "p99"):
        rows.append(
            Figure(
                f"latency.routed.{stat}_ms",
                f"Latency 200 -> delivered by RabbitMQ (a probe queue), {stat}",
                "ms",
                digits=1,
            )
        )
    for stat in ("p50", "p99"):
        rows.append(
            Figure(
                f"latency.drain.{stat}_ms",
                f"Latency 200 -> published by the drain (its commit), {stat}",
                "ms",
                digits=1,
            )
        )
    for listener in listeners:
        for stat, limit in (("p50", 3.0), ("p99", 10.0)):
            rows.append(
                Figure(
                    f"latency.{listener}.{stat}_ms",
                    f"Latency 200 -> applied by {listener}, {stat} @100 cmd/s",
                    "ms",
                    baseline=f"bare_chain.{stat}_ms",
                    target=f"<= {limit:g} ms",
                    check=at_most(limit),
                    digits=1,
                )
            )
    for stat, limit in (("p50", 3.0), ("p99", 10.0)):
        rows.append(
            Figure(
                f"latency_t.worst.{stat}_ms",
                f"Latency with dramatiq -t {few_threads}: slowest listener's {stat}",
                "ms",
                baseline=f"bare_chain.{stat}_ms",
                target=f"<= {limit:g} ms",
                check=at_most(limit),
                digits=1,
            )
        )
    # Issue 21's targets: ratios to the floor, on fresh tables, right after a
    # burst, with grown tables.
    for prefix, what in (
        ("latency", "fresh tables"),
        ("burst", "right after a burst"),
        ("grown", "with grown tables"),
    ):
        for stat, limit in (("p50", 1.5), ("p99", 2.0)):
            rows.append(
                Figure(
                    f"{prefix}.worst.{stat}_ms",
                    f"Slowest listener's latency {stat} @100 cmd/s, {what}",
                    "ms",
                    baseline=f"bare_chain.{stat}_ms",
                    target=f"<= {limit:g}x the floor",
                    check=at_most_ratio(limit),
                    digits=1,
                )
            )
        if prefix != "latency":  # (reported with the floor's, below)
            rows.append(Figure(f"{prefix}.busy_pct", "  machine's cores busy meanwhile", "%"))
    rows += [
        Figure(
            "sustained.chain_cps",
            "Sustained commands/s, bare chain (slowest listener applied)",
            "cmd/s",
        ),
        Figure(
            "sustained.cps",
            "Sustained commands/s, service (every listener applied)",
            "cmd/s",
            baseline="sustained.chain_cps",
            target=">= 1.0x the bare chain",
            check=at_least_ratio(1.0),
        ),
    ]
    for variant, what in (
        ("classic1", "classic queues, 1 node"),
        ("quorum1", "quorum queues, 1 node"),
        ("quorum3", "quorum queues, 3-node cluster"),
    ):
        compared = None if variant == "classic1" else "quorum.classic1"
        rows.append(
            Figure(
                f"quorum.{variant}.dps",
                f"Deliveries/s end to end, {what} (--only quorum)",
                "deliv/s",
                baseline=compared and f"{compared}.dps",
            )
        )
        for stat in ("p50", "p99"):
            rows.append(
                Figure(
                    f"quorum.{variant}.{stat}_ms",
                    f"  slowest listener's latency {stat} @100 cmd/s, {what}",
                    "ms",
                    baseline=compared and f"{compared}.{stat}_ms",
                    digits=1,
                )
            )
    rows += [
        Figure(
            "latency.resolution_ms", "  latency method's own delay (probe median)", "ms", digits=2
        ),
        Figure(
            "latency.busy_pct",
            "  machine's cores busy during the service's latency load",
            "%",
            baseline="bare_chain.busy_pct",
        ),
        Figure(
            "bare_chain.busy_pct", "  machine's cores busy during the floor's latency load", "%"
        ),
        *(
            Figure(
                f"latency.cpu_ms.{part}",
                f"  CPU per command @100 cmd/s, {part}",
                "ms",
                baseline=f"bare_chain.cpu_ms.{part}",
                digits=2,
            )
            for part in LATENCY_CPU_PARTS
        ),
        Figure(
            "backlog.large.seconds",
            f"Backlog {large:,} events: start workers -> all applied",
            "s",
            target="<= 60 s",
            check=at_most(60.0),
            digits=1,
        ),
        Figure(
            "backlog.large.completed", "  runs that finished before the deadline", "of 1", digits=2
        ),
        Figure(
            "backlog.large.dps",
            "  deliveries/s while applying it",
            "deliv/s",
            baseline="bare_actor.dps",
            target=">= 4x bare Dramatiq+PG",
            check=at_least_ratio(4.0),
        ),
        Figure(
            "backlog.large.drain_mps",
            "  drain: outbox rows published/s",
            "msg/s",
            baseline="amqp.tx_batched",
        ),
        *(
            Figure(
                f"backlog.large.cpu_ms.{part}",
                f"  CPU per delivery meanwhile, {part}",
                "ms",
                baseline=f"bare_actor.cpu_ms.{part}",
                digits=3,
            )
            for part in ("workers", "postgres", "rabbitmq", "machine")
        ),
        Figure(
            "backlog.large.peak_rss_mb",
            "  peak RSS of a worker process",
            "MB",
            target="<= 100 MB",
            check=at_most(100.0),
            digits=1,
        ),
        Figure(
            "backlog.large.rss_growth_mb",
            "  RSS growth, early -> end of run",
            "MB",
            digits=1,
        ),
        Figure(
            "backlog.large.rss_growth_2nd_half_mb",
            "  of which in the run's second half",
            "MB",
            digits=1,
        ),
        Figure(
            "backlog.small.seconds",
            f"Backlog {small:,} events: start workers -> all applied",
            "s",
            digits=1,
        ),
        Figure(
            "backlog.small.completed", "  runs that finished before the deadline", "of 1", digits=2
        ),
        Figure("backlog.small.peak_rss_mb", "  peak RSS of a worker process", "MB", digits=1),
        Figure(
            "scale.p1.dps",
            "Scaling: 1 worker process (drain+listeners)",
            "deliv/s",
            baseline="bare_actor.dps",
        ),
        Figure(
            "e2e.dps",
            "Scaling: 2 worker processes (= sustained figure)",
            "deliv/s",
            baseline="bare_actor.dps",
        ),
        Figure(
            "scale.drain1.dps",
            "Scaling: 1 drain-only proc + 1 listener proc",
            "deliv/s",
            baseline="bare_actor.dps",
        ),
        Figure(
            "scale.drain2.dps",
            "Scaling: 2 drain-only procs + 1 listener proc",
            "deliv/s",
            baseline="bare_actor.dps",
        ),
    ]
    return rows


def median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:,.{digits}f}"


def method(k: Knobs, fan_out: int) -> str:
    """RESULTS.md's "How each figure is measured", for knobs ``k`` and ``fan_out`` listeners."""
    return f"""## How each figure is measured

- **Processes**: the API is `gunicorn -c gunicorn.conf.py` with
  WEB_CONCURRENCY={k.web_concurrency} and GUNICORN_THREADS={k.gunicorn_threads}; the workers are
  `dramatiq cqrs_warehouse.worker -p {k.worker_processes} -t {k.worker_threads}` (dramatiq's
  defaults on 2 cores); LOG_FORMAT=json to a file; each run has a fresh database (a copy of
  a migrated template) and its own QUEUE_PREFIX, removed afterwards. Baselines use the same
  gunicorn.conf.py and process layout.
- **Load generator** (bench/loadgen.py): its own process, HTTP/1.1 keep-alive over raw asyncio
  streams (a client library would take far more CPU from the server on 2 cores; its own CPU
  share is recorded as `client_cpu`). Commands: half increases, half shipments of 1-3 units
  over {k.skus} SKUs seeded with a large stock (no shipment fails, the low-quantity notifier
  never fires).
- **Commands/s**: the API alone (workers stopped, so the outbox just fills), {k.http_connections}
  closed-loop clients, {k.http_warmup:g} s warm-up, {k.http_window:g} s window, only 200 answers
  counted. Bare Falcon: the same routes, one peewee insert+commit per POST, no validation,
  logging, metrics or outbox.
- **Sustained deliveries/s**: API + workers together, {k.e2e_connections} closed-loop clients
  (as many as for the API alone, so that the machine, not the clients, is the bound: the lag
  shows whether the listeners keep up), {k.e2e_warmup:g} s warm-up, then the
  growth over {k.e2e_window:g} s of the sum over listeners and SKUs of
  messaging_stream_positions.position (each unit is one delivery applied). The lag is the
  events committed (sum of warehouse_product_stock.version) minus the slowest listener's sum at
  the window's end. Bare Dramatiq actor: {k.bare_actor_messages:,} messages enqueued before
  its workers start, rate between 10 % and 90 % applied.
- **Latency**: measured twice, with the default worker layout and with `-t
  {k.latency_worker_threads}` (fewer threads per worker process; the table shows the slowest
  listener for it). After a CHECKPOINT (earlier scenarios' writes flushed),
  {k.latency_rate:g} commands/s for {k.latency_warmup:g} s of warm-up, not measured, then
  {k.latency_duration:g} s measured, open loop (a slow answer does not delay the next send),
  over {k.latency_skus} SKUs in turn, so each SKU's
  positions are known. A trigger added only in the benchmark database on
  messaging_stream_positions runs `pg_notify` when a listener's position advances; a thread
  of the suite LISTENs on its own connection and timestamps each notification as it arrives
  (it is delivered when the listener's transaction commits). Latency = first notification of
  that listener and SKU at or past the command's position, minus the time the load generator
  read the 200 answer; both clocks are CLOCK_MONOTONIC. Resolution: probe notifications sent
  from another connection before each run arrive within the "method's own delay" shown in the
  table (median, an upper bound), well below the targets. Two hops on the way are timed the
  same way: RabbitMQ's delivery of the event to a probe queue of the suite's (not durable,
  bound with `#`; its consumer timestamps each delivery), and the drain's commit (a trigger on
  the outbox's DELETE). The floor, measured the same way
  with the same load: the bare chain (bench/baselines/bare_chain.py), the bare Falcon app's
  insert+commit whose trigger NOTIFYs a relay process, which publishes a persistent message
  in confirm mode to a fanout exchange with one durable queue per listener, and
  {fan_out} bare pika consumers, one thread each, doing one upsert+commit
  per message before the ack. The latency rows' ratio is the service's over the floor's
  slowest listener. "Cores busy" is the machine's CPU time (user, system, interrupts; not
  time stolen by a hypervisor) over the load's wall time and the number of cores, for the
  service's load and the floor's: a fixed rate's latency stays near its floor only while
  the machine has cores to spare. "CPU per command" is the CPU time of each part over the
  same load (its warm-up included) divided by the commands answered: the API (gunicorn),
  the workers (the floor's: its relay and bare listeners), the PostgreSQL backends of the
  run's database, RabbitMQ's VM, and the whole machine.
- **Backlog**: the events are written by the service's own commands, in-process
  (bench/fill_outbox.py: `cqrs_warehouse.runtime.build` + the warehouse's commands, 500 to a
  transaction, {k.backlog_fill_parts} processes side by side) into a template database once per
  suite run; each run copies it (CREATE DATABASE ... TEMPLATE). Consecutive events belong to
  different SKUs ({k.skus}). Timed from starting the workers to every listener having applied
  every event; a run stops at {k.backlog_deadline_large_s:g} s ({k.backlog_deadline_small_s:g} s
  for the small one) and then reports the time projected from the slowest listener's rate over
  the run's second half. RSS is sampled every 0.2 s for each dramatiq process holding an AMQP
  connection (the worker processes, not their parent nor the Prometheus fork); the drain rate
  is the outbox's row count going down.
- **Raw AMQP**: a durable topic exchange bound to {fan_out} durable queues
  (the listeners' fan-out; the server's default queue version, as the service declares them),
  persistent messages with the drain's properties;
  {k.amqp_single_messages:,} messages with pika's BlockingChannel in confirm mode (a round
  trip each), then {k.amqp_batched_messages:,} published {k.amqp_batch} at a time with one wait
  for their confirms per batch (pika's SelectConnection), then the same in one AMQP
  transaction per batch (`tx_select`/`tx_commit`).
- **Runs**: the scenarios are interleaved (run 1 of each, then run 2 ...), so that a busy
  moment of the shared machine is spread over the service and its baselines."""
