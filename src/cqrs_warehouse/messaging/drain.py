"""The drain: claim a batch of outbox rows, publish them, delete them once confirmed.

Run by the ``drain_outbox`` actor (see ``listeners.build_actors``); woken by
NOTIFY (PostgreSQL) or a nudge after commit, and by the periodic sweep.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal

from . import context, metrics
from .database import database, is_postgres
from .outbox import OutboxRecord
from .transport import Publisher

logger = logging.getLogger(__name__)


class Drain:
    def __init__(self, publisher: Publisher, *, batch_size: int = 500) -> None:
        self.publisher = publisher
        self.batch_size = batch_size
        # TEST-ONLY FAULT HOOK, used by the fault-injection suite (tests/faults):
        # with CQRS_FAULT_KILL_AFTER_PUBLISH=N this process SIGKILLs itself
        # right after its Nth confirmed batch, before deleting the rows, to
        # crash between publish and delete. Never set it in production.
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
        with database.atomic():
            records = self._claim()
            if not records:
                return 0
            # A crash between publish and delete re-publishes the batch on
            # the next run: listeners recognise the messages they already applied.
            after_commit = self.publisher.publish(records)
            # Test-only fault hook (see __init__): crash between publish and delete.
            if self._fault_kill_after and next(self._fault_publishes) >= self._fault_kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            OutboxRecord.delete().where(OutboxRecord.id.in_([r.id for r in records])).execute()
        if after_commit is not None:
            after_commit()
        metrics.count_published(len(records))
        for record in records:
            with context.bound(
                correlation_id=record.correlation_id,
                message_id=record.message_id,
                message_type=record.type,
            ):
                logger.info("published %s", record.message_id)
        return len(records)

    def _claim(self) -> list[OutboxRecord]:
        query = OutboxRecord.select().order_by(OutboxRecord.id).limit(self.batch_size)
        if is_postgres(database.obj):
            # Several drains at once each take rows no other drain holds.
            query = query.for_update(skip_locked=True)
        # On SQLite the transaction began IMMEDIATE: it holds the write lock.
        return list(query)
