"""What each figure is called, its unit, its same-run baseline and its target.

Scenarios return figures by key; this is the one place that says how they
are reported. A ratio is the service figure's median over its baseline's
median, both from the same suite run.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass


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
        ),
        Figure(
            "backlog.large.drain_mps",
            "  drain: outbox rows published/s",
            "msg/s",
            baseline="amqp.tx_batched",
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
