"""The drain: take a batch of outbox rows, publish it, and let the rows go once it is confirmed.

Run by the wake-up thread of the worker processes (``waking.DrainWaker``) or
by the drain actor. The batch is taken (deleted) in a transaction that
commits only once the broker has confirmed every message, and rolls back
(the rows come back) if publishing fails or the process dies first: a crash
between publish and commit publishes the batch again, and listeners
recognise the messages they already applied.

Where the database signals commits (PostgreSQL), each notification that
wakes the drain carries a row just committed (its id alone if the row is too
long for a notification). The leading drain, woken by fresh notifications,
publishes those rows as they are, then deletes them while RabbitMQ confirms
them, and commits: no query stands between a commit and its publication
(docs/decisions/0025-publish-the-notified-row.md). Otherwise it takes the
rows from the smallest notified id to the largest: the rows before were
taken already (docs/decisions/0024-take-from-the-notified-id.md), the rows
after have notifications to come. It takes every row instead on its first
run, after a batch failed (its rows came back), when a notification names no
row, and when woken without notifications (the sweep, the drain actor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

from .metrics import Metrics
from .storage.outbox import LAST_ID, OutboxRow, OutboxStore, notified_id, notified_row
from .tracing import Tracing

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish(
        self, rows: Sequence[OutboxRow], *, meanwhile: Callable[[], object] | None = None
    ) -> Callable[[], None] | None:
        """Publish every row; return only once the broker has accepted them all.

        ``meanwhile`` is called once the messages went out, before waiting for
        the broker (again if the batch is sent again on a new connection: it
        must bear that). May return an action to run once the drain's
        transaction has committed.
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
        # Whether the last run took rows whose notifications are still to come
        # (and not to be published as notified); the first run may.
        self._took_unnotified = True

    def run(self, notified: Sequence[str] = (), *, as_notified: bool = False) -> int:
        """Publish the rows with ids from the smallest in ``notified`` to the
        largest (those no other drain took), or every row if it is handed none.

        ``as_notified``: when every notification carries its row, publish
        those rows and nothing else, without taking them first (for the
        leading drain, whose notifications no other drain has acted on yet:
        ``waking.DrainWaker``). Not after a run that took rows it was not
        notified of: their notifications are still to come.
        """
        try:
            rows = _rows(notified) if as_notified and not self._took_unnotified else None
            if rows:
                return self._publish_notified(rows)
            ids = [notified_id(payload) for payload in notified]
            start, end = (0, LAST_ID) if self._from_start else _bounds(ids)
            self._from_start = self._took_unnotified = False
            known = set(ids)
            total = 0
            while True:
                taken = self.run_batch(start, end)
                total += len(taken)
                self._took_unnotified |= any(row.id not in known for row in taken)
                if len(taken) < self.batch_size:
                    return total
        except BaseException:
            self._from_start = self._took_unnotified = True
            raise

    def run_batch(self, start: int = 0, end: int = LAST_ID) -> Sequence[OutboxRow]:
        """Take a batch of rows with ids from ``start`` to ``end`` and publish it; the rows."""
        with self.database.atomic():
            rows = self.store.take(self.batch_size, start, end)
            if not rows:
                return rows
            after_commit = self._publish(rows)
        self._published(rows, after_commit)
        return rows

    def _publish_notified(self, rows: Sequence[OutboxRow]) -> int:
        for first in range(0, len(rows), self.batch_size):
            batch = rows[first : first + self.batch_size]
            take = partial(self.store.take_published, [row.id for row in batch])
            with self.database.atomic():
                # Taken while RabbitMQ confirms: a follower skips them from then on.
                after_commit = self._publish(batch, take)
            self._published(batch, after_commit)
        return len(rows)

    def _publish(
        self, rows: Sequence[OutboxRow], meanwhile: Callable[[], object] | None = None
    ) -> Callable[[], None] | None:
        with self.tracing.publishing(rows) as sent:  # a span per traced row
            return self.publisher.publish(sent, meanwhile=meanwhile)

    def _published(
        self, rows: Sequence[OutboxRow], after_commit: Callable[[], None] | None
    ) -> None:
        if after_commit is not None:
            after_commit()
        self.metrics.count_published(len(rows))
        logger.info("published %d messages", len(rows))
        if not logger.isEnabledFor(logging.DEBUG):
            return
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


def _rows(notified: Sequence[str]) -> list[OutboxRow] | None:
    """The rows the notifications carry, oldest first; None unless each carries its row."""
    rows = [notified_row(payload) for payload in notified]
    carried = [row for row in rows if row is not None]
    return sorted(carried, key=lambda row: row.id) if len(carried) == len(rows) else None


def _bounds(ids: Sequence[int | None]) -> tuple[int, int]:
    """The smallest and the largest notified id; every id if there is none, or
    a notification names no row (None)."""
    named = [id_ for id_ in ids if id_ is not None]
    return (min(named), max(named)) if named and len(named) == len(ids) else (0, LAST_ID)
