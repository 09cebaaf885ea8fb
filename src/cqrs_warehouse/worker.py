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
from collections.abc import Iterable
from typing import Any

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
from dramatiq.middleware.prometheus import Prometheus  # noqa: E402

from . import logs  # noqa: E402
from .background_logging import FlushLogsAtShutdown, write_in_background  # noqa: E402
from .bootstrap import bootstrap  # noqa: E402
from .messaging.errors import MessagingError  # noqa: E402
from .settings import Settings  # noqa: E402


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


class _PrometheusPerDelivery(Prometheus):
    """Dramatiq's Prometheus middleware, with a listener's batch counted as its deliveries.

    The listeners' consumer hands a listener the deliveries that arrived
    together as one Dramatiq message, with an envelope per delivery as its
    arguments (broker.py). Dramatiq's middleware would count that message
    once, so ``dramatiq_messages_total`` and its errored, rejected and
    retried counts would depend on how deliveries happened to be batched.
    Here a listener's message counts once per envelope: the same as
    ``cqrs_listener_messages_total`` and RabbitMQ's own counts, however they
    were batched. The duration histogram and the in-progress gauges stay per
    Dramatiq message: a batch is processed, and timed, as one.
    """

    def __init__(self, listener_actors: Iterable[str]) -> None:
        super().__init__()
        self.listener_actors = frozenset(listener_actors)

    def _more(self, message: Any) -> tuple[tuple[str, str], int]:
        """The message's labels, and how many deliveries it stands for beyond one."""
        extra = len(message.args) - 1 if message.actor_name in self.listener_actors else 0
        return (message.queue_name, message.actor_name), max(0, extra)

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        super().after_process_message(broker, message, result=result, exception=exception)
        labels, extra = self._more(message)
        if extra:
            self.total_messages.labels(*labels).inc(extra)
            if exception is not None:
                self.total_errored_messages.labels(*labels).inc(extra)

    after_skip_message = after_process_message

    def after_nack(self, broker: Any, message: Any) -> None:
        super().after_nack(broker, message)
        labels, extra = self._more(message)
        if extra:
            self.total_rejected_messages.labels(*labels).inc(extra)

    def after_enqueue(self, broker: Any, message: Any, delay: Any) -> None:
        super().after_enqueue(broker, message, delay)
        labels, extra = self._more(message)
        if extra and "retries" in message.options:
            self.total_retried_messages.labels(*labels).inc(extra)


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
    _PrometheusPerDelivery(actor.actor_name for actor in runtime.listener_actors.values())
)
if _own_metrics_dir:
    broker.add_middleware(_RemoveMetricsWhenLast(_metrics_dir))
# What is loaded by now (modules, schemas, actors) lives as long as the
# process: out of the collector's sight, a full collection no longer walks it
# (measured: 20 ms with every thread stopped, against a few microseconds),
# which would otherwise land on whichever message is being applied.
gc.freeze()
