"""The raw baselines of the stack, in the same suite run as the service.

- bare Falcon + PostgreSQL: one insert+commit per POST, same gunicorn settings
  and the same load generator as the service's commands/s;
- bare Dramatiq actor: one update+commit per message, same worker layout as
  the service's workers, consuming a queue filled before it starts;
- raw AMQP publishing with per-message and batched confirms.
"""

from __future__ import annotations

import contextlib
import sys
import time

import pika.exceptions

from .. import cpu
from ..baselines import amqp_publish
from ..context import Context
from ..cpu import CpuMeter
from ..http_load import run_load
from ..infra import delete_queues, queue_depth
from ..installation import wait_until_serving
from ..processes import BIN, ROOT, Service, environment, free_port, run_helper, wait_for

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
    env = environment(
        DATABASE_URL=url,
        BROKER_URL=ctx.broker_url,
        LISTENERS_CONFIG=str(ctx.routing.path),
        WEB_CONCURRENCY=str(knobs.web_concurrency),
        GUNICORN_THREADS=str(knobs.gunicorn_threads),
    )
    api = Service.start(
        name,
        [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "-b",
            f"127.0.0.1:{port}",
            "bench.baselines.bare_falcon:app",
        ],
        env=env,
        log_dir=ctx.log_dir,
    )
    try:
        wait_until_serving(api, port)
    except BaseException:
        api.stop()
        raise
    return api, port


def bare_falcon(ctx: Context) -> dict[str, float]:
    knobs = ctx.knobs
    name = f"{ctx.tag}_bare_falcon"
    url = ctx.postgres.create(name)
    try:
        ctx.postgres.execute(name, BARE_COMMANDS_TABLE)
        api, port = start_bare_falcon(ctx, name, url)
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
            api.stop()
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
    env = environment(DATABASE_URL=url, BROKER_URL=ctx.broker_url, QUEUE_PREFIX=prefix)
    count = knobs.bare_actor_messages
    try:
        run_helper(
            [sys.executable, "-m", "bench.baselines.bare_actor", str(count)], env=env, timeout=300
        )
        if queue_depth(queue, ctx.broker_url) != count:
            raise RuntimeError(f"{queue} holds {queue_depth(queue, ctx.broker_url)}, not {count}")
        db = ctx.postgres.connect(name)
        try:
            workers = Service.start(
                name,
                [
                    str(BIN / "dramatiq"),
                    "bench.baselines.bare_actor",
                    "-p",
                    str(knobs.worker_processes),
                    "-t",
                    str(knobs.worker_threads),
                ],
                env=env,
                log_dir=ctx.log_dir,
            )
            meter = CpuMeter(
                {
                    "workers": cpu.tree(workers.pid),
                    "postgres": cpu.postgres_backends(db, name),
                    "rabbitmq": cpu.by_name("beam.smp"),
                }
            )
            try:
                rate, total_s, used = _consumption_rate(
                    db, workers, count, knobs.bare_actor_deadline_s, meter
                )
            finally:
                workers.stop()
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
            delete_queues([queue, f"{queue}.DQ", f"{queue}.XQ"], url=ctx.broker_url)


def _consumption_rate(
    db, workers: Service, count: int, deadline: float, meter: CpuMeter
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

    def progress() -> bool:
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
        return done >= count

    wait_for(progress, timeout=deadline, interval=0.05, what="the bare actor's messages applied")
    rate = 0.8 * count / max(1e-3, marks[0.9] - marks[0.1])
    return rate, time.monotonic() - workers.started, used


def _require_only_ok(result: dict, what: str) -> None:
    if set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"{what}: answers other than 200: {result['statuses']}")
