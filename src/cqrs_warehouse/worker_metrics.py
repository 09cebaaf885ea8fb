"""The workers' Prometheus middleware. Imported by ``worker_setup`` only.

Importing Dramatiq's Prometheus middleware reads its metrics folder
(``dramatiq_prom_db``) from the environment, so the worker set-up imports this
module once it has set that folder; nothing else in the service imports it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from typing import Any

from dramatiq.middleware import Middleware
from dramatiq.middleware.prometheus import Prometheus

from .worker_exposition import alive, pid_of, serve_metrics


class PrometheusPerDelivery(Prometheus):
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

    @property
    def forks(self) -> list[Any]:
        """The exposition server, on the workers' folder (``worker_exposition``)."""
        return [serve_metrics]

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


class RemoveMetricsWhenLast(Middleware):
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
        if not any(alive(pid) for name in names if (pid := pid_of(name)) is not None):
            shutil.rmtree(self.folder, ignore_errors=True)
