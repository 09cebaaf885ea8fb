"""Time to apply a backlog waiting in the outbox, and the workers' memory meanwhile.

Set-up (once per suite run): the backlog is written by the service's own
commands (bench.fill_outbox) into a template database, the small one first,
then a copy of it topped up to the large one. Each run copies a template
(PostgreSQL's CREATE DATABASE ... TEMPLATE, a file copy) so every run starts
from the same outbox without writing it again.

A run starts ``dramatiq cqrs_warehouse.worker`` (default layout) on the copy
and times, from that start, until every listener applied every event. Each
run stops at its deadline; if the backlog is not applied by then the total
is extrapolated from the slowest listener's rate over the second half of the
run (reported as "projected"). The resident memory of each worker process
(the dramatiq processes holding an AMQP connection; not its parent nor its
Prometheus fork) is sampled every 0.2 s: the peak, and the growth from early
in the run to its end, tell whether memory follows the backlog.

CPU: the workers', PostgreSQL's (the run database's backends) and RabbitMQ's
(its whole VM) CPU time from when the slowest listener has applied 10 % of
the backlog to when it has applied 90 %, divided by the deliveries applied
meanwhile: what a delivery costs when the listeners apply batches, and so
the most deliveries/s the machine's cores allow at that cost.
"""

from __future__ import annotations

import statistics
import sys
import time

from tests.support.environment import service_env

from .. import cpu, infra
from ..context import Context
from ..cpu import CpuMeter
from ..infra import RssSampler
from ..service import installed

MB = 1024 * 1024


class Templates:
    """The backlog templates of this suite run: {size: database name}."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.databases: dict[int, str] = {}
        self.fill_seconds: dict[int, float] = {}

    def build(self) -> None:
        """Write both templates; once more from scratch if that fails (a restart of the
        shared PostgreSQL the fill could not ride out, say)."""
        try:
            self._build()
        except (RuntimeError, OSError) as error:
            self.ctx.notes.append(f"writing the backlog templates failed once: {error!s:.300}")
            self.drop()
            infra.wait_for_servers(self.ctx.postgres, self.ctx.broker_url)
            self._build()

    def _build(self) -> None:
        knobs = self.ctx.knobs
        previous_size, previous = 0, self.ctx.migrated_template
        for size in (knobs.backlog_small, knobs.backlog_large):
            name = f"{self.ctx.tag}_tpl_backlog{size}"
            url = self.ctx.postgres.create(name, template=previous)
            self.databases[size] = name
            started = time.monotonic()
            self.fill(url, previous_size, size)
            self.fill_seconds[size] = time.monotonic() - started
            previous_size, previous = size, name

    def fill(self, url: str, start: int, stop: int) -> None:
        """Commands ``start`` to ``stop`` - 1 of bench.fill_outbox into ``url``'s outbox."""
        knobs = self.ctx.knobs
        env = service_env(
            {
                "DATABASE_URL": url,
                "BROKER_URL": self.ctx.broker_url,
                "LISTENERS_CONFIG": str(self.ctx.routing.path),
                "QUEUE_PREFIX": f"{self.ctx.tag}_fill_",
            }
        )
        parts = knobs.backlog_fill_parts
        # Side by side: the commands cost client CPU more than database time.
        writers = [
            self.ctx.start(
                f"fill{stop}_{part}",
                [
                    sys.executable,
                    "-m",
                    "bench.fill_outbox",
                    *map(str, (start, stop, knobs.skus, part, parts)),
                ],
                env,
            )
            for part in range(parts)
        ]
        deadline = time.monotonic() + 900
        for writer in writers:
            if writer.wait(timeout=max(1, deadline - time.monotonic())) != 0:
                raise RuntimeError(f"filling the backlog failed:\n{writer.output()[-3000:]}")
            writer.terminate()

    def drop(self) -> None:
        for name in self.databases.values():
            self.ctx.postgres.drop(name)
        self.databases.clear()


def run(ctx: Context, templates: Templates, size: int) -> dict[str, float]:
    knobs = ctx.knobs
    deadline = (
        knobs.backlog_deadline_small_s
        if size == knobs.backlog_small
        else knobs.backlog_deadline_large_s
    )
    label = "large" if size == knobs.backlog_large else "small"
    with installed(ctx, f"backlog{size}", template=templates.databases[size]) as service:
        events = service.committed_events()
        if events != size or service.outbox_rows() != size:
            raise RuntimeError(f"backlog template holds {events} events, not {size}")
        workers = service.start_workers()
        started = time.monotonic()  # timed from the workers' start
        trace: list[tuple[float, int]] = []  # (seconds since start, slowest listener's count)
        outbox: list[tuple[float, int]] = []  # (seconds since start, rows left)
        worker_pids: set[int] = set()
        meter = CpuMeter(
            {
                "workers": cpu.tree(workers.pid),
                "postgres": cpu.postgres_backends(service.db, service.name),
                "rabbitmq": cpu.by_name("beam.smp"),
            }
        )
        window: list[int] = []  # deliveries applied as the meter started, then stopped
        used: dict[str, float] = {}
        with RssSampler(workers.pid) as rss:
            while True:
                service.require_alive()
                elapsed = time.monotonic() - started
                applied = service.applied()
                slowest = min(applied.values())
                trace.append((elapsed, slowest))
                if not window and slowest >= 0.1 * size:
                    meter.start()
                    window.append(sum(applied.values()))
                elif len(window) == 1 and slowest >= 0.9 * size:
                    used = meter.stop()
                    window.append(sum(applied.values()))
                if not outbox or outbox[-1][1] > 0:
                    outbox.append((elapsed, service.outbox_rows()))
                if not worker_pids or len(trace) % 20 == 0:
                    worker_pids |= set(service.installation.worker_pids(workers))
                if slowest >= size or elapsed >= deadline:
                    break
                time.sleep(0.25)
        applied_all = sum(service.applied().values())
    elapsed, slowest = trace[-1]
    completed = slowest >= size
    figures = {
        f"backlog.{label}.seconds": elapsed if completed else _projected(trace, size),
        f"backlog.{label}.completed": 1.0 if completed else 0.0,
        f"backlog.{label}.dps": applied_all / elapsed,
        f"backlog.{label}.drain_mps": _drain_rate(outbox, size),
    }
    figures.update(_memory(rss, worker_pids, label))
    if used:
        deliveries = max(1, window[1] - window[0])
        for part, seconds in used.items():
            figures[f"backlog.{label}.cpu_ms.{part}"] = 1000 * seconds / deliveries
    return figures


def _projected(trace: list[tuple[float, int]], size: int) -> float:
    """Seconds to apply all, at the slowest listener's rate over the run's second half."""
    elapsed, done = trace[-1]
    middle = next(point for point in trace if point[0] >= elapsed / 2)
    rate = (done - middle[1]) / max(1e-9, elapsed - middle[0])
    return float("inf") if rate <= 0 else elapsed + (size - done) / rate


def _drain_rate(outbox: list[tuple[float, int]], size: int) -> float:
    """Rows published per second, from the first sample with rows gone to the last."""
    started = next(((t, rows) for t, rows in outbox if rows < size), None)
    if started is None or outbox[-1] == started:
        return 0.0
    (t0, rows0), (t1, rows1) = started, outbox[-1]
    return (rows0 - rows1) / (t1 - t0)


def _memory(rss: RssSampler, worker_pids: set[int], label: str) -> dict[str, float]:
    if not worker_pids:
        raise RuntimeError("no worker process was seen holding an AMQP connection")
    peaks = [rss.peaks[pid] / MB for pid in worker_pids if pid in rss.peaks]
    growths, second_halves = [], []
    for pid in worker_pids:
        samples = rss.samples.get(pid, [])
        if len(samples) < 10:
            continue
        # Early: 10-20 % into the run (after imports and the first batches);
        # middle: 45-55 %; late: the last 10 %. Growth that stops after the
        # first half is warming up; growth that goes on is what a leak does.
        n = len(samples)

        def mean_rss(start: float, end: float, n: int = n, samples: list = samples) -> float:
            window = samples[int(start * n) : max(int(start * n) + 1, int(end * n))]
            return statistics.mean(v for _, v in window)

        early, middle, late = mean_rss(0.1, 0.2), mean_rss(0.45, 0.55), mean_rss(0.9, 1.0)
        growths.append((late - early) / MB)
        second_halves.append((late - middle) / MB)
    return {
        f"backlog.{label}.peak_rss_mb": max(peaks),
        f"backlog.{label}.rss_growth_mb": max(growths) if growths else 0.0,
        f"backlog.{label}.rss_growth_2nd_half_mb": max(second_halves) if second_halves else 0.0,
        f"backlog.{label}.workers": float(len(worker_pids)),
    }
