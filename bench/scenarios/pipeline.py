"""Sustained deliveries/s end to end, and how it scales with worker processes.

API, drain and listeners share the machine: a closed loop of a few clients
sends commands while the workers drain the outbox and apply the events. A
delivery is one listener applying one event, so each command makes one per
listener. The figure is the rate at which the listeners' applied positions
grow over the measuring window, after a warm-up; the backlog left at the
end (events committed but not yet applied by the slowest listener) shows
whether the listeners kept up with the commands or fell behind.

Layouts (``dramatiq cqrs_warehouse.worker``, 8 threads per process unless
said otherwise):

- ``p1``: one process running the drain and every listener;
- ``p2``: two such processes (the default layout, the main figure);
- ``drain1`` / ``drain2``: the drain on its own (``--queues <prefix>outbox_drain``)
  in one or two processes, the listeners in another process. Every worker
  process runs the drain actor unless ``--queues`` leaves its queue out;
  and every process still runs the NOTIFY waker, which only sends the drain
  actor wake-ups.
"""

from __future__ import annotations

import time
from typing import Any

from .. import cpu
from ..context import Context
from ..cpu import CpuMeter
from ..loadgen import LoadRun
from ..service import SKU_PREFIX, ServiceUnderTest, installed

DRAIN_QUEUE = "outbox_drain"


def run(ctx: Context) -> dict[str, float]:
    """The main figure: the default layout (``p2``)."""
    knobs = ctx.knobs
    figures = measure(ctx, "p2", warmup=knobs.e2e_warmup, window=knobs.e2e_window)
    return {f"e2e.{key}": value for key, value in figures.items()}


def scaling(ctx: Context) -> dict[str, float]:
    """The other layouts, one run each."""
    knobs = ctx.knobs
    figures = {}
    for layout in ("p1", "drain1", "drain2"):
        measured = measure(ctx, layout, warmup=knobs.scaling_warmup, window=knobs.scaling_window)
        figures[f"scale.{layout}.dps"] = measured["dps"]
        figures[f"scale.{layout}.lag_growth"] = measured["lag_growth"]
    return figures


def start_layout(service: ServiceUnderTest, layout: str) -> None:
    listeners = list(service.ctx.routing.listeners)
    if layout == "p1":
        service.start_workers(processes=1)
    elif layout == "p2":
        service.start_workers(processes=2)
    elif layout in ("drain1", "drain2"):
        drains = 1 if layout == "drain1" else 2
        service.start_workers(processes=drains, threads=1, queues=[DRAIN_QUEUE])
        service.start_workers(processes=1, queues=listeners)
    else:
        raise ValueError(layout)


def measure(
    ctx: Context, layout: str, *, warmup: float, window: float, name: str = "", **options: Any
) -> dict[str, float]:
    """``options``: the installation's broker and settings (``service.installed``)."""
    with installed(ctx, name or f"e2e_{layout}", **options) as service:
        port = service.start_api()
        start_layout(service, layout)
        service.probe()
        load = closed_loop(ctx, port, warmup=warmup, window=window)
        meter = cpu_meter(service, load)
        time.sleep(warmup)
        start_applied, first_at = service.applied(), time.monotonic()
        start_committed = service.committed_events()
        first = sum(start_applied.values())
        meter.start()
        time.sleep(window)
        used = meter.stop()
        applied = service.applied()
        last_at = time.monotonic()
        committed = service.committed_events()
        result = load.result()
        service.require_alive()
    if set(result["statuses"]) - {"200"}:
        raise RuntimeError(f"pipeline {layout}: answers other than 200: {result['statuses']}")
    deliveries = sum(applied.values()) - first
    figures = {
        "dps": deliveries / (last_at - first_at),
        "cps": result["rate"],
        # Events committed that the slowest listener had not applied yet, and how
        # fast that grew: > 0, the listeners were the bound; ~0, the commands were.
        "lag": committed - min(applied.values()),
        "lag_growth": (
            (committed - min(applied.values())) - (start_committed - min(start_applied.values()))
        )
        / (last_at - first_at),
    }
    for part, seconds in used.items():
        figures[f"cpu_ms.{part}"] = 1000 * seconds / max(1, deliveries)
    return figures


def closed_loop(ctx: Context, port: int, *, warmup: float, window: float) -> LoadRun:
    """The end-to-end load: ``e2e_connections`` closed-loop clients over the seeded SKUs."""
    return LoadRun(
        {
            "mode": "closed",
            "port": port,
            "sku_prefix": SKU_PREFIX,
            "skus": ctx.knobs.skus,
            "connections": ctx.knobs.e2e_connections,
            "warmup": warmup,
            "window": window,
        },
        timeout=warmup + window + 60,
    )


def cpu_meter(service: ServiceUnderTest, load: LoadRun) -> CpuMeter:
    return CpuMeter({**service.cpu_parts(), "loadgen": cpu.tree(load.process.pid)})
