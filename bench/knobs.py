"""Every size, duration and concurrency the suite uses, in one place.

The defaults keep a full run (3 runs of everything) near 15 minutes on the
2-core machine; ``QUICK`` is for checking the suite itself, not for figures.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Knobs:
    #: Independent runs of every measurement; RESULTS.md gives their median.
    runs: int = 3

    # Process layout, the same for the service and its baselines. gunicorn's
    # and dramatiq's own defaults on a 2-core machine.
    web_concurrency: int = 2
    gunicorn_threads: int = 4
    worker_processes: int = 2
    worker_threads: int = 8

    #: SKUs the load spreads over (seeded with a large stock so that shipments
    #: never fail and never trigger the low-quantity notifier's extra event).
    skus: int = 1000

    # Commands/s through the REST API (the API alone, closed loop).
    http_connections: int = 16
    http_warmup: float = 2.0
    http_window: float = 8.0

    # Sustained end-to-end deliveries/s (API, drain and listeners together).
    # As many clients as for the API alone: with listeners that apply batches,
    # 8 clients left the machine's CPU partly idle and the lag at 0 (the
    # figure measured the clients' pace, not the service's).
    e2e_connections: int = 16
    e2e_warmup: float = 3.0
    e2e_window: float = 8.0
    scaling_warmup: float = 2.0
    scaling_window: float = 6.0

    # Latency from a command's response to each listener having applied it.
    latency_rate: float = 100.0
    latency_warmup: float = 2.0  # sent first, not measured (see scenarios/latency.py)
    latency_duration: float = 10.0
    latency_skus: int = 200
    latency_settle: float = 30.0  # longest wait for the last commands after the load
    latency_worker_threads: int = 2  # the second latency layout: dramatiq -t 2

    # Backlog: events waiting in the outbox before the workers start.
    backlog_small: int = 20_000
    backlog_large: int = 100_000
    backlog_target_s: float = 60.0
    # Each backlog run stops at its deadline; what is left is extrapolated.
    # The large deadline is just past the target: a run still going then has
    # missed it, and its second half gives the rate to project the rest from.
    backlog_deadline_small_s: float = 35.0
    backlog_deadline_large_s: float = 62.0
    backlog_fill_parts: int = 2  # parallel processes writing the backlog

    # The service once its tables grew (scenarios/grown.py): a burst written
    # with the workers stopped, and SKUs added to every table.
    burst: int = 100_000
    grown_skus: int = 1_000_000

    # Bare Dramatiq actor: messages enqueued before its workers start.
    bare_actor_messages: int = 20_000
    bare_actor_deadline_s: float = 60.0

    # Raw AMQP publishing.
    amqp_single_messages: int = 3_000
    amqp_batched_messages: int = 20_000
    amqp_batch: int = 500  # the drain's default OUTBOX_BATCH_SIZE

    # Profiling (only with --profile).
    profile_seconds: float = 15.0


DEFAULT = Knobs()

QUICK = replace(
    DEFAULT,
    runs=1,
    skus=200,
    http_window=3.0,
    e2e_warmup=2.0,
    e2e_window=4.0,
    scaling_warmup=2.0,
    scaling_window=3.0,
    latency_duration=4.0,
    backlog_small=2_000,
    backlog_large=6_000,
    backlog_deadline_small_s=20.0,
    backlog_deadline_large_s=30.0,
    bare_actor_messages=3_000,
    burst=5_000,
    grown_skus=50_000,
    amqp_single_messages=500,
    amqp_batched_messages=3_000,
    profile_seconds=5.0,
)
