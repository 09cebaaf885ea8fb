"""What `dramatiq cqrs_warehouse.worker` imports: the broker with the drain and every listener.

This module is the wiring point of the worker processes, so it bootstraps on
import (Dramatiq needs the actors declared before it starts consuming). It
reads the settings and listeners.yaml; it connects to nothing until the
worker runs.
"""

import gc
import logging
import os
import re
import shutil
import sys
import tempfile

# Prometheus's multiprocess mode is chosen when prometheus_client is first
# imported, so its folder is set before anything imports it. Dramatiq's
# Prometheus middleware keeps one folder per machine by default; one per
# installation (QUEUE_PREFIX) keeps several installations' metrics apart.
_installation = os.environ.get("QUEUE_PREFIX") or "default"
_own_metrics_dir = "dramatiq_prom_db" not in os.environ
_metrics_dir = os.environ.setdefault(
    "dramatiq_prom_db",  # dramatiq's own (lower-case) name
    os.path.join(tempfile.gettempdir(), f"cqrs-warehouse-{_installation}-metrics"),
)
os.makedirs(_metrics_dir, exist_ok=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

from dramatiq.middleware import Middleware  # noqa: E402

from . import logs  # noqa: E402
from .background_logging import FlushLogsAtShutdown, write_in_background  # noqa: E402
from .bootstrap import bootstrap  # noqa: E402
from .messaging.errors import MessagingError  # noqa: E402
from .settings import Settings  # noqa: E402
from .worker_metrics import PrometheusPerDelivery  # noqa: E402


class _RemoveMetricsWhenLast(Middleware):
    """Removes the installation's metrics folder when its last worker process
    stops, so that installations that come and go (tests, benchmarks) leave
    nothing behind. A folder given in dramatiq_prom_db is the operator's and
    stays.

    A stopping process first removes its own files (its counters leave the
    sums, which Prometheus reads as a counter reset), then the folder if no
    file of a live process is left: of processes stopping together, the
    last to remove its files sees none left.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def after_worker_shutdown(self, broker: object, worker: object) -> None:
        own = f"_{os.getpid()}.db"
        try:
            for name in os.listdir(self.folder):
                if name.endswith(own):
                    os.remove(os.path.join(self.folder, name))
            names = os.listdir(self.folder)
        except OSError:
            return
        # prometheus_client names its files <kind>_<pid>.db.
        pids = {int(m.group(1)) for n in names if (m := re.search(r"_(\d+)\.db$", n))}
        if not any(_alive(pid) for pid in pids):
            shutil.rmtree(self.folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


logs.configure()
# Nor does a worker's format show the thread or process of a line (dramatiq's
# own format, which does, is replaced by logs.configure in this process):
# logging need not look them up for each line either.
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False
write_in_background()
try:
    runtime = bootstrap(Settings.from_env())
except MessagingError as error:
    # One clear line instead of an import traceback from dramatiq.
    print(f"cqrs-warehouse worker: {error}", file=sys.__stderr__, flush=True)
    raise SystemExit(2) from None
broker = runtime.broker
broker.add_middleware(FlushLogsAtShutdown())
# Metrics of every worker process, served by dramatiq on dramatiq_prom_port (9191).
broker.add_middleware(
    PrometheusPerDelivery(actor.actor_name for actor in runtime.listener_actors.values())
)
if _own_metrics_dir:
    broker.add_middleware(_RemoveMetricsWhenLast(_metrics_dir))
# What is loaded by now (modules, schemas, actors) lives as long as the
# process: out of the collector's sight, a full collection no longer walks it
# (measured: 20 ms with every thread stopped, against a few microseconds),
# which would otherwise land on whichever message is being applied.
gc.freeze()
