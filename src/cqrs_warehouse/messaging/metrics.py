"""Prometheus metrics of the messaging core.

``Metrics`` counts what the listeners and the drain did, in a registry of
its own (the runtime's); in Prometheus's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``) the counts of every process add up in one
exposition whatever the registry. ``StateCollector`` reads, at scrape time,
what no single process counts: the outbox's depth and the age of its oldest
row, dead letters per listener, how many messages wait in each
listener's queue (its lag behind the newest event) and how many consumers it has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.listener_messages = Counter(
            "cqrs_listener_messages_total",
            "Messages a listener handled, by outcome.",
            ["listener", "outcome"],
            registry=self.registry,
        )
        self.published = Counter(
            "cqrs_outbox_published_total", "Messages the drain published.", registry=self.registry
        )
        self.consistent_reads = Counter(
            "cqrs_consistent_reads_total",
            "Reads with a consistency token, by outcome (applied, timed_out, busy).",
            ["outcome"],
            registry=self.registry,
        )
        # prometheus_client converts label values and takes a lock on every
        # .labels() call; the set of (listener, outcome) pairs stays small.
        self._children: dict[tuple[str, str], Any] = {}

    def count_outcome(self, listener: str, outcome: str, count: int = 1) -> None:
        """outcome: applied, duplicate, held, unbound, retried or dead_lettered."""
        key = (listener, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.listener_messages.labels(listener, outcome)
        child.inc(count)

    def count_published(self, count: int) -> None:
        self.published.inc(count)

    def count_consistent_read(self, outcome: str) -> None:
        self.consistent_reads.labels(outcome).inc()


class StateCollector(Collector):
    """Gauges computed from the database and the broker at scrape time."""

    def __init__(
        self,
        *,
        outbox_status: Callable[[], tuple[int, float | None]],
        dead_letters: Callable[[], dict[str, int]],
        queue_depths: Callable[[], dict[str, tuple[int, int | None]]],
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
            consumers = GaugeMetricFamily(
                "cqrs_listener_consumers",
                "Consumers of a listener's queue (RabbitMQ only): 0 means nothing applies it.",
                labels=["listener"],
            )
            for listener, (count, consuming) in sorted(self.queue_depths().items()):
                lag.add_metric([listener], count)
                if consuming is not None:
                    consumers.add_metric([listener], consuming)
            yield lag
            yield consumers
        except Exception:
            logger.warning("could not read the listener queues for metrics", exc_info=True)
