"""The drain: claim a batch of outbox rows, publish them, delete them once confirmed.

Run by the NOTIFY thread of the worker processes (PostgreSQL, see
middleware.DrainWaker) or by the ``drain_outbox`` actor (woken by a nudge
after commit), and by the periodic sweep.

On PostgreSQL one statement claims and deletes the batch; the transaction
commits once RabbitMQ has confirmed every message, and rolls back (the rows
come back) if publishing fails or the process dies first. That commit is
asynchronous (``synchronous_commit`` off for this transaction only): if
PostgreSQL crashed before writing it, the rows would come back and be
published again, which listeners recognise, so nothing waits for its disk
write. Everything else in the service commits synchronously.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import metrics
from .database import database, execute_prepared, is_postgres, qualified_name
from .outbox import OutboxRecord
from .transport import Publisher

logger = logging.getLogger(__name__)


class Drain:
    def __init__(self, publisher: Publisher, *, batch_size: int = 500) -> None:
        self.publisher = publisher
        self.batch_size = batch_size
        # TEST-ONLY FAULT HOOK, used by the fault-injection suite (tests/faults):
        # with CQRS_FAULT_KILL_AFTER_PUBLISH=N this process SIGKILLs itself
        # right after its Nth confirmed batch, before its transaction (which
        # deletes the rows) commits, to crash between publish and delete.
        # Never set it in production.
        kill_after = os.environ.get("CQRS_FAULT_KILL_AFTER_PUBLISH")
        self._fault_kill_after = int(kill_after) if kill_after else None
        self._fault_publishes = itertools.count(1)

    def run(self) -> int:
        """Publish until the outbox is empty (or only holds rows other drains claimed)."""
        total = 0
        while True:
            published = self.run_batch()
            total += published
            if published < self.batch_size:
                return total

    def run_batch(self) -> int:
        postgres = is_postgres(database.obj)
        with database.atomic():
            records = self._claim_and_delete() if postgres else self._claim()
            if not records:
                return 0
            # A crash between publish and commit re-publishes the batch on
            # the next run: listeners recognise the messages they already applied.
            after_commit = self.publisher.publish(records)
            # Test-only fault hook (see __init__): crash between publish and delete.
            if self._fault_kill_after and next(self._fault_publishes) >= self._fault_kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if not postgres:
                OutboxRecord.delete().where(OutboxRecord.id.in_([r.id for r in records])).execute()
        if after_commit is not None:
            after_commit()
        metrics.count_published(len(records))
        for record in records:
            # The context fields of the line, as ``context.bound`` would set them.
            logger.info(
                "published %s",
                record.message_id,
                extra={
                    "correlation_id": record.correlation_id,
                    "message_id": record.message_id,
                    "message_type": record.type,
                },
            )
        return len(records)

    def _claim(self) -> list[OutboxRecord]:
        # On SQLite the transaction began IMMEDIATE: it holds the write lock.
        return list(OutboxRecord.select().order_by(OutboxRecord.id).limit(self.batch_size))

    def _claim_and_delete(self) -> Sequence[_Claimed]:
        """The oldest rows no other drain holds, deleted by this (open) transaction."""
        sql = _CLAIM_AND_DELETE.format(outbox=qualified_name(OutboxRecord))
        cursor = execute_prepared(
            sql, (self.batch_size,), prefix="SET LOCAL synchronous_commit TO OFF; "
        )
        # RETURNING does not keep the subquery's order: publish oldest first.
        return sorted((_Claimed(*row) for row in cursor.fetchall()), key=lambda r: r.id)


class _Claimed(NamedTuple):
    """An outbox row as the claiming statement returns it (attributes as OutboxRecord's)."""

    id: int
    message_id: str
    type: str
    schema_version: int
    payload: Any  # memoryview
    stream: str | None
    position: int | None
    correlation_id: str | None
    predecessors: str | None


# Several drains at once each take rows no other drain holds (SKIP LOCKED).
_CLAIM_AND_DELETE = (
    "DELETE FROM {outbox} WHERE id IN ("
    "SELECT id FROM {outbox} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
    "RETURNING id, message_id, type, schema_version, payload, stream, position, "
    "correlation_id, predecessors"
)
