"""The workers' Prometheus folder, and dramatiq's exposition server reading it.

Imports nothing of Prometheus: the folder must be chosen before
prometheus_client or dramatiq's Prometheus middleware is imported.
"""

from __future__ import annotations

import contextlib
import os
import re
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
    folder whenever dramatiq_prom_db is not set (``PrometheusPerDelivery.forks``).
    Dramatiq starts it with the worker processes: the files a killed process
    left unreadable are removed first (``remove_unreadable_files``)."""
    metrics_folder()
    remove_unreadable_files(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    from dramatiq.middleware.prometheus import _run_exposition_server

    return _run_exposition_server()


def remove_unreadable_files(folder: str) -> None:
    """Remove from the Prometheus folder the files that dead processes left unreadable.

    prometheus_client creates a process's file, then sizes it: a process killed
    in between (SIGKILL, the OOM killer) leaves an empty file, and every scrape
    of the workers' metrics fails on it (prometheus_client cannot read its
    header) until it is gone. A dead process's readable files stay: its counts
    are part of the totals. So does a live process's file, even empty: it is
    being created.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid, path = pid_of(name), os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if pid is not None and os.path.getsize(path) < _HEADER and not alive(pid):
                os.remove(path)


#: prometheus_client's file header: the bytes used (4) and padding (4).
_HEADER = 8


def pid_of(name: str) -> int | None:
    """The process of a prometheus_client file (it names them ``<kind>_<pid>.db``)."""
    match = re.search(r"_(\d+)\.db$", name)
    return int(match.group(1)) if match else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
