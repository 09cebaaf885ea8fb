"""A worker process's set-up: metrics folder, logging, the runtime and Dramatiq's broker.

``worker_broker`` is what `dramatiq cqrs_warehouse.worker` runs (worker.py),
and what a test's own worker module runs to inject a fault. A module that
calls it imports nothing else of the service first: Prometheus's
multiprocess mode is chosen when prometheus_client is first imported.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any


def worker_broker(*, wrap_publisher: Callable[[Any], Any] | None = None) -> Any:
    """The broker of this worker process, with the drain and every listener
    declared on it, made Dramatiq's global broker (its CLI runs that one)."""
    own_metrics_folder = _metrics_folder()
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


def _metrics_folder() -> str | None:
    """Set the workers' Prometheus folder (Dramatiq's ``dramatiq_prom_db``): one
    per installation (QUEUE_PREFIX), to keep installations' metrics apart;
    returned if it is this process's own to remove (not the operator's)."""
    installation = os.environ.get("QUEUE_PREFIX") or "default"
    own = "dramatiq_prom_db" not in os.environ
    folder = os.environ.setdefault(
        "dramatiq_prom_db",  # dramatiq's own (lower-case) name
        os.path.join(tempfile.gettempdir(), f"cqrs-warehouse-{installation}-metrics"),
    )
    os.makedirs(folder, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder if own else None
