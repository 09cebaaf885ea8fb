"""The raw baselines of the stack, in the same suite run as the service.

- bare Falcon + PostgreSQL: one insert+commit per POST, same gunicorn settings
  and the same load generator as the service's commands/s;
- bare Dramatiq actor: one update+commit per message, same worker layout as
  the service's workers, consuming a queue filled before it starts;
- raw AMQP publishing with per-message and batched confirms;
- the bare latency chain: the latency floor, the same paced load measured the
  same way as the service's latency (``latency.py``) through the bare hops of
  the stack (``baselines/bare_chain.py``).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pika.exceptions
import psycopg2.extensions
import requests
from tests.support.environment import service_env
from tests.support.processes import BIN, ROOT, Service, free_port, run_to_exit
from tests.support.services import delete_from_broker, queue_depth
from tests.support.waiting import eventually, wait_for_http

from .. import cpu, infra
from ..baselines import amqp_publish
from ..baselines import bare_chain as chain
from ..context import Context
from ..cpu import CpuMeter
from ..loadgen import run_load
from ..service import SKU_PREFIX
from .latency import (
    CHANNEL,
    ROUTED,
    AppliedWatcher,
    RoutedWatcher,
    calibrate,
    latencies,
    paced_load,
    settle,
)

# The bare Falcon app's table (bench.baselines.bare_falcon.BareCommand).
BARE_COMMANDS_TABLE = (
    "CREATE TABLE bench_bare_commands (id BIGSERIAL PRIMARY KEY, sku VARCHAR(64) NOT NULL, "
    "action VARCHAR(32) NOT NULL, quantity INTEGER NOT NULL)"
)


def amqp(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    prefix = f"{ctx.tag}_amqp_"
    with amqp_publish.topology(prefix, len(ctx.routing.listeners), ctx.broker_url) as exchange:
        single = amqp_publish.per_message(ctx.broker_url, exchange, knobs.amqp_single_messages)
        batched = amqp_publish.batched(
            ctx.broker_url, exchange, knobs.amqp_batched_messages, knobs.amqp_batch
        )
        tx = amqp_publish.tx_batched(
            ctx.broker_url, exchange, knobs.amqp_batched_messages, knobs.amqp_batch
        )
    return {"amqp.per_message": single, "amqp.batched": batched, "amqp.tx_batched": tx}


def start_bare_falcon(ctx: Context, name: str, url: str) -> tuple[Service, int]:
    """gunicorn serving the bare Falcon app on ``url`` (its table made); (service, port)."""
    knobs = ctx.knobs
    port = free_port()
    # The service's gunicorn.conf.py checks the service's settings before
    # it starts: give it valid ones, though the bare app uses none of them.
    env = service_env(
        {
            "DATABASE_URL": url,
            "BROKER_URL": ctx.broker_url,
            "LISTENERS_CONFIG": str(ctx.routing.path),
            "WEB_CONCURRENCY": str(knobs.web_concurrency),
            "GUNICORN_THREADS": str(knobs.gunicorn_threads),
        }
    )
    api = ctx.start(
        name,
        [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "-b",
            f"127.0.0.1:{port}",
            "bench.baselines.bare_falcon:app",
        ],
        env,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/livez", [api], timeout=60)
    except BaseException:
        api.terminate()
        raise
    return api, port


def bare_falcon(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    name = f"{ctx.tag}_bare_falcon"
    url = ctx.postgres.create(name)
    try:
        infra.execute(ctx.postgres, name, BARE_COMMANDS_TABLE)
        api, port = start_bare_falcon(ctx, "bare_falcon", url)
        try:
            result = run_load(
                {
                    "mode": "closed",
                    "port": port,
                    "sku_prefix": "bare",
                    "skus": knobs.skus,
                    "connections": knobs.http_connections,
                    "warmup": knobs.http_warmup,
                    "window": knobs.http_window,
                },
                timeout=knobs.http_warmup + knobs.http_window + 60,
            )
            api.require_alive()
        finally:
            api.terminate()
        _require_only_ok(result, "bare Falcon")
        return {
            "bare_falcon.cps": result["rate"],
            "bare_falcon.p99_ms": result["p99_ms"],
            "bare_falcon.client_cpu": result["client_cpu"],
        }
    finally:
        ctx.postgres.drop(name)


def bare_actor(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    name = f"{ctx.tag}_bare_actor"
    prefix = f"{name}_"
    queue = f"{prefix}bare_actor"
    url = ctx.postgres.create(name)
    env = service_env({"DATABASE_URL": url, "BROKER_URL": ctx.broker_url, "QUEUE_PREFIX": prefix})
    count = knobs.bare_actor_messages
    try:
        enqueued = run_to_exit(
            [sys.executable, "-m", "bench.baselines.bare_actor", str(count)],
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        if enqueued.returncode != 0:
            raise RuntimeError(f"enqueueing the bare actor's messages failed:\n{enqueued.stderr}")
        if queue_depth(queue, ctx.broker_url) != count:
            raise RuntimeError(f"{queue} holds {queue_depth(queue, ctx.broker_url)}, not {count}")
        db = ctx.postgres.connect(name)
        try:
            workers = ctx.start(
                "bare_actor",
                [
                    str(BIN / "dramatiq"),
                    "bench.baselines.bare_actor",
                    "-p",
                    str(knobs.worker_processes),
                    "-t",
                    str(knobs.worker_threads),
                ],
                env,
            )
            started = time.monotonic()
            meter = CpuMeter(
                {
                    "workers": cpu.tree(workers.pid),
                    "postgres": cpu.postgres_backends(db, name),
                    "rabbitmq": cpu.by_name("beam.smp"),
                }
            )
            try:
                rate, total_s, used = _consumption_rate(
                    db, workers, started, count, knobs.bare_actor_deadline_s, meter
                )
            finally:
                workers.terminate()
        finally:
            db.close()
        figures = {"bare_actor.dps": rate, "bare_actor.total_s": total_s}
        for part, seconds in used.items():
            figures[f"bare_actor.cpu_ms.{part}"] = 1000 * seconds / (0.8 * count)
        return figures
    finally:
        ctx.postgres.drop(name)
        # The suite's final sweep deletes them if the broker is away just now.
        with contextlib.suppress(pika.exceptions.AMQPError):
            delete_from_broker([queue, f"{queue}.DQ", f"{queue}.XQ"], url=ctx.broker_url)


def _consumption_rate(
    db, workers: Service, started: float, count: int, deadline: float, meter: CpuMeter
) -> tuple[float, float, dict[str, float]]:
    """Deliveries/s between 10 % and 90 % of ``count`` applied (start-up and the
    last stragglers left out), the seconds from start to all applied, and the CPU
    seconds each part used between those two marks."""
    marks: dict[float, float] = {}
    used: dict[str, float] = {}

    def applied() -> int:
        with db.cursor() as cursor:
            cursor.execute("SELECT COALESCE(SUM(n), 0) FROM bench_bare_counters")
            return int(cursor.fetchone()[0])

    def progress() -> None:
        workers.require_alive()
        done = applied()
        now = time.monotonic()
        for fraction in (0.1, 0.9):
            if done >= fraction * count and fraction not in marks:
                marks[fraction] = now
                if fraction == 0.1:
                    meter.start()
                else:
                    used.update(meter.stop())
        assert done >= count, f"the bare actor applied {done} of {count} messages"

    eventually(progress, timeout=deadline, interval=0.05)
    rate = 0.8 * count / max(1e-3, marks[0.9] - marks[0.1])
    return rate, time.monotonic() - started, used


def _require_only_ok(result: dict, what: str) -> None:
    if set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"{what}: answers other than 200: {result['statuses']}")


@contextlib.contextmanager
def bare_chain_running(
    ctx: Context, name: str
) -> Iterator[tuple[int, AppliedWatcher, float, dict[str, cpu.PidSource]]]:
    """The bare chain of the stack's hops (``baselines/bare_chain.py``), one bare
    listener per service listener, started and probed: (API port, the watcher
    of its listeners' commits, the watcher's resolution in ms, its processes
    by part as the service's ``cpu_parts``: the relay and listeners are its
    workers)."""
    prefix = f"{name}_"
    listeners = tuple(chain.listener_names(len(ctx.routing.listeners)))
    url = ctx.postgres.create(name)
    queues: list[str] = []
    services: list[Service] = []
    watcher: AppliedWatcher | None = None
    admin: psycopg2.extensions.connection | None = None
    try:
        infra.execute(ctx.postgres, name, BARE_COMMANDS_TABLE)
        infra.execute(
            ctx.postgres,
            name,
            chain.TABLES.format(notify_channel=chain.NOTIFY_CHANNEL, applied_channel=CHANNEL),
        )
        queues = chain.declare(ctx.broker_url, prefix, len(listeners))
        watcher = AppliedWatcher(url)
        resolution_ms = calibrate(url, watcher)
        env = service_env(
            {"DATABASE_URL": url, "BROKER_URL": ctx.broker_url, "QUEUE_PREFIX": prefix}
        )
        for role in (["relay"], ["listeners", str(len(listeners))]):
            services.append(
                ctx.start(
                    f"bare_chain_{role[0]}",
                    [sys.executable, "-m", "bench.baselines.bare_chain", *role],
                    env,
                )
            )
        api, port = start_bare_falcon(ctx, "bare_chain_api", url)
        services.append(api)
        # One command through the whole chain: every part is up.
        probe = f"{SKU_PREFIX}chainprobe"
        answer = requests.post(
            f"http://127.0.0.1:{port}/warehouse/products/{probe}/increase_quantity",
            json={"quantity": 1},
            timeout=30,
        )
        if answer.status_code != 200:
            raise RuntimeError("the bare chain's probe command was refused")
        seen_by = watcher

        def probed() -> None:
            for service in services:
                service.require_alive()
            applied = {p.split(" ")[0] for _, p in seen_by.seen if f" {probe} " in p}
            assert applied == set(listeners), f"the bare chain's probe applied by {applied}"

        eventually(probed, timeout=60, interval=0.1)
        settle(ctx, name)
        watcher.seen = []
        relay_and_listeners = [cpu.tree(service.pid) for service in services[:2]]
        admin = ctx.postgres.connect()
        parts = {
            "api": cpu.tree(api.pid),
            "workers": lambda: [pid for source in relay_and_listeners for pid in source()],
            "postgres": cpu.postgres_backends(admin, name),
            "rabbitmq": cpu.by_name("beam.smp"),
        }
        yield port, watcher, resolution_ms, parts
    finally:
        if admin is not None:
            admin.close()
        if watcher is not None:
            watcher.close()
        for service in services:
            service.terminate()
        ctx.postgres.drop(name)
        delete_from_broker(queues, [chain.exchange_name(prefix)], url=ctx.broker_url)


def bare_chain(ctx: Context) -> dict[str, float]:
    """The floor: the same load, measured the same way, through the bare chain."""
    knobs = ctx.knobs
    listeners = tuple(chain.listener_names(len(ctx.routing.listeners)))
    name = f"{ctx.tag}_bare_chain"
    with bare_chain_running(ctx, name) as (port, watcher, resolution_ms, parts):
        # The chain's messages are a SKU, and RabbitMQ delivers one queue's in
        # order: the n-th message of a SKU is its position n.
        counts: dict[str, int] = defaultdict(int)

        def stream_position(properties: Any, body: bytes) -> tuple[str, int]:
            sku = body.decode()
            counts[sku] += 1
            return sku, counts[sku]

        exchange = chain.exchange_name(f"{name}_")
        routed = RoutedWatcher(ctx.broker_url, exchange, watcher.seen, stream_position)
        try:
            # The chain counts from 1.
            result = paced_load(ctx, port, start_position=0, parts=parts)
        finally:
            routed.close()
        expected = result["answered"]

        def all_applied() -> None:
            applied: dict[str, int] = defaultdict(int)
            for _, payload in watcher.seen:
                applied[payload.split(" ")[0]] += 1
            assert all(applied[listener] >= expected for listener in listeners), (
                f"the bare chain applied {dict(applied)} of {expected}"
            )

        eventually(all_applied, timeout=knobs.latency_settle, interval=0.1)
        seen = list(watcher.seen)
    figures = latencies(result["records"], seen, (ROUTED, *listeners))
    return {
        "bare_chain.p50_ms": figures["latency.worst.p50_ms"],
        "bare_chain.p99_ms": figures["latency.worst.p99_ms"],
        "bare_chain.routed.p50_ms": figures[f"latency.{ROUTED}.p50_ms"],
        "bare_chain.routed.p99_ms": figures[f"latency.{ROUTED}.p99_ms"],
        "bare_chain.resolution_ms": resolution_ms,
        "bare_chain.http_p50_ms": statistics.median(r[3] for r in result["records"]) * 1000,
        "bare_chain.busy_pct": result["busy_pct"],
        **{f"bare_chain.cpu_ms.{part}": ms for part, ms in result["cpu_ms"].items()},
    }
