"""The workers' Prometheus folder, and dramatiq's exposition server reading it.

Imports nothing of Prometheus: the folder must be chosen before
prometheus_client or dramatiq's Prometheus middleware is imported.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


def metrics_folder() -> str | None:
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


def serve_metrics() -> Any:
    """Dramatiq's Prometheus exposition server, on the folder this installation's
    workers write to. Dramatiq runs it in a process forked from its parent,
    which never imports worker.py: without this it would read its own default
    folder whenever dramatiq_prom_db is not set (``PrometheusPerDelivery.forks``)."""
    metrics_folder()
    from dramatiq.middleware.prometheus import _run_exposition_server

    return _run_exposition_server()
