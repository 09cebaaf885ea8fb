"""`dramatiq tests.faults.crashing_worker`: the service's worker whose drain crashes
between publish and delete.

Each worker process SIGKILLs itself right after the broker confirmed its
drain's Nth batch (N: FAULT_KILL_AFTER_PUBLISH), before the drain's
transaction, which deletes the batch's rows, commits: the rows come back and
are published again. Started by the fault suite with
``Installation.start_workers(module="tests.faults.crashing_worker", env=...)``.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

# Nothing of the service before worker_broker(): it chooses Prometheus's
# multiprocess folder, which must happen before prometheus_client is imported.
from cqrs_warehouse.worker_setup import worker_broker

if TYPE_CHECKING:
    from cqrs_warehouse.messaging.drain import Publisher
    from cqrs_warehouse.messaging.storage.outbox import OutboxRow

KILL_AFTER = int(os.environ["FAULT_KILL_AFTER_PUBLISH"])


class KillAfterPublish:
    """The drain's publisher, with this process SIGKILLed after its ``kill_after``th
    confirmed batch."""

    def __init__(self, publisher: Publisher, kill_after: int) -> None:
        self.publisher = publisher
        self.kill_after = kill_after
        self.batches = itertools.count(1)

    def publish(
        self, rows: Sequence[OutboxRow], *, meanwhile: Callable[[], object] | None = None
    ) -> Callable[[], None] | None:
        # Returns once the broker confirmed.
        after_commit = self.publisher.publish(rows, meanwhile=meanwhile)
        if next(self.batches) >= self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return after_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.publisher, name)


broker = worker_broker(wrap_publisher=lambda publisher: KillAfterPublish(publisher, KILL_AFTER))
