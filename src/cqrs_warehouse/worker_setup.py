"""A worker process's set-up: metrics folder, logging, the runtime and Dramatiq's broker.

``worker_broker`` is what `dramatiq cqrs_warehouse.worker` runs (worker.py),
and what a test's own worker module runs to inject a fault. A module that
calls it imports nothing else of the service first: Prometheus's
multiprocess mode is chosen when prometheus_client is first imported.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

from .worker_exposition import metrics_folder


def worker_broker(*, wrap_publisher: Callable[[Any], Any] | None = None) -> Any:
    """The broker of this worker process, with the drain and every listener
    declared on it, made Dramatiq's global broker (its CLI runs that one)."""
    own_metrics_folder = metrics_folder()
    # Imported only now: Prometheus's multiprocess mode is chosen when
    # prometheus_client is first imported, which these imports do.
    import dramatiq
    from prometheus_client import values

    from . import logs
    from .background_logging import FlushLogsAtShutdown, write_in_background
    from .messaging.errors import MessagingError
    from .runtime import build
    from .worker_metrics import PrometheusPerDelivery, RemoveMetricsWhenLast

    if values.ValueClass is values.MutexValue:
        # Every count of this process would be lost to the workers' exposition.
        raise RuntimeError("prometheus_client was imported before worker_broker() chose its folder")
    logs.configure()
    # Nor does a worker's format show a line's thread or process: logging
    # need not look them up for each line either.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    write_in_background()
    try:
        runtime = build(wrap_publisher=wrap_publisher)
        runtime.check_routing()  # what cannot work stops the workers
        broker = runtime.broker
    except MessagingError as error:
        # One clear line instead of an import traceback from dramatiq.
        print(f"cqrs-warehouse worker: {error}", file=sys.__stderr__, flush=True)
        raise SystemExit(2) from None
    broker.add_middleware(FlushLogsAtShutdown())
    # Metrics of every worker process, served by dramatiq on dramatiq_prom_port (9191).
    broker.add_middleware(
        PrometheusPerDelivery(spec.actor_name for spec in runtime.routing.listeners)
    )
    if own_metrics_folder is not None:
        broker.add_middleware(RemoveMetricsWhenLast(own_metrics_folder))
    dramatiq.set_broker(broker)
    # What is loaded by now lives as long as the process: out of the
    # collector's sight (docs/decisions/0008-gc-freeze.md).
    gc.freeze()
    return broker
