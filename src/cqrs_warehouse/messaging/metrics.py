"""Prometheus metrics of the messaging core.

Counters are created on first use, so that a process sets up Prometheus's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) before any exists: gunicorn
workers and dramatiq worker processes then add up in one exposition.
``StateCollector`` reads, at scrape time, what no single process counts: the
outbox's depth and the age of its oldest row, dead letters per listener, and
how many messages wait in each listener's queue (its lag behind the newest
event).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_counters: dict[str, Any] = {}


def _counter(name: str, documentation: str, labels: list[str]) -> Any:
    counter = _counters.get(name)
    if counter is None:
        from prometheus_client import Counter

        with _lock:
            counter = _counters.get(name)
            if counter is None:
                counter = _counters[name] = Counter(name, documentation, labels)
    return counter


def count_listener_outcome(listener: str, outcome: str, count: int = 1) -> None:
    """outcome: applied, duplicate, held, unbound, retried or dead_lettered."""
    _counter(
        "cqrs_listener_messages_total",
        "Messages a listener handled, by outcome.",
        ["listener", "outcome"],
    ).labels(listener, outcome).inc(count)


def count_published(count: int) -> None:
    _counter("cqrs_outbox_published_total", "Messages the drain published.", []).inc(count)


class StateCollector(Collector):
    """Gauges computed from the database and the broker at scrape time."""

    def __init__(
        self,
        *,
        outbox_status: Callable[[], tuple[int, float | None]],
        dead_letters: Callable[[], dict[str, int]],
        queue_depths: Callable[[], dict[str, int]],
    ) -> None:
        self.outbox_status = outbox_status
        self.dead_letters = dead_letters
        self.queue_depths = queue_depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth, age = self.outbox_status()
            yield GaugeMetricFamily(
                "cqrs_outbox_depth", "Messages waiting in the outbox.", value=depth
            )
            yield GaugeMetricFamily(
                "cqrs_outbox_oldest_age_seconds",
                "Age of the oldest message waiting in the outbox (0 when empty).",
                value=age or 0.0,
            )
            letters = GaugeMetricFamily(
                "cqrs_dead_letters", "Dead letters kept, per listener.", labels=["listener"]
            )
            for listener, count in sorted(self.dead_letters().items()):
                letters.add_metric([listener], count)
            yield letters
        except Exception:
            logger.warning("could not read the outbox for metrics", exc_info=True)
        try:
            lag = GaugeMetricFamily(
                "cqrs_listener_lag_messages",
                "Messages waiting in a listener's queue: its lag behind the newest event.",
                labels=["listener"],
            )
            for listener, count in sorted(self.queue_depths().items()):
                lag.add_metric([listener], count)
            yield lag
        except Exception:
            logger.warning("could not read the listener queues for metrics", exc_info=True)
