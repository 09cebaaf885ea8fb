"""The drain: take a batch of outbox rows, publish it, and let the rows go once it is confirmed.

Run by the wake-up thread of the worker processes (``waking.DrainWaker``) or
by the drain actor. The batch is taken (deleted) in a transaction that
commits only once the broker has confirmed every message, and rolls back
(the rows come back) if publishing fails or the process dies first: a crash
between publish and commit publishes the batch again, and listeners
recognise the messages they already applied.

Where the database signals commits (PostgreSQL), each notification that
wakes the drain carries the id of a row just committed, and the take starts
at the smallest: the rows before it were taken already
(docs/decisions/0024-take-from-the-notified-id.md says why). It starts at
the beginning instead on its first run, after a batch failed (its rows came
back), when a notification is not an id, and when woken without
notifications (the sweep, the drain actor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .metrics import Metrics
from .storage.outbox import OutboxRow, OutboxStore
from .tracing import Tracing

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(self, rows: Sequence[OutboxRow]) -> Callable[[], None] | None:
        """Publish every row; return only once the broker has accepted them all.

        May return an action to run once the drain's transaction has committed.
        """


class Drain:
    def __init__(
        self,
        database: Any,
        store: OutboxStore,
        publisher: Publisher,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        tracing: Tracing | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.batch_size = batch_size
        self.tracing = tracing or Tracing()
        self._from_start = True  # until a take from the start has begun

    def run(self, notified: Sequence[str] = ()) -> int:
        """Publish until the outbox is empty (or only holds rows other drains
        took) from the smallest id in ``notified`` on, or from the start."""
        start = _smallest_id(notified)
        if self._from_start or start is None:
            self._from_start, start = False, 0
        total = 0
        try:
            while True:
                published = self.run_batch(start)
                total += published
                if published < self.batch_size:
                    return total
        except BaseException:
            self._from_start = True
            raise

    def run_batch(self, start: int = 0) -> int:
        with self.database.atomic():
            rows = self.store.take(self.batch_size, start)
            if not rows:
                return 0
            with self.tracing.publishing(rows) as sent:  # a span per traced row
                after_commit = self.publisher.publish(sent)
        if after_commit is not None:
            after_commit()
        self.metrics.count_published(len(rows))
        logger.info("published %d messages", len(rows))
        if not logger.isEnabledFor(logging.DEBUG):
            return len(rows)
        for row in rows:
            # The context fields of the line, as ``context.bound`` would set them.
            logger.debug(
                "published %s",
                row.message_id,
                extra={
                    "correlation_id": row.correlation_id,
                    "message_id": row.message_id,
                    "message_type": row.type,
                },
            )
        return len(rows)


def _smallest_id(notified: Sequence[str]) -> int | None:
    """The smallest of the notified ids; None if there is none, or a payload is not an id."""
    if not notified or not all(payload.isdecimal() for payload in notified):
        return None
    return min(map(int, notified))
