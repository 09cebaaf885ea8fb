"""What the workers' sweep prunes so that tables stay bounded: processed-message
records once no redelivery can come (PROCESSED_MESSAGES_RETENTION), and, only
if ARCHIVE_RETENTION is set, archived messages older than it (after which a
rebuild is refused: ``listening/rebuild.pruned_from_archive``).

Each sweep deletes at most ``batches`` batches of ``batch`` rows per table,
each in its own short transaction, oldest first; on PostgreSQL by row
address (``ctid = ANY(ARRAY(...))``, a TID scan whatever the statistics say)
with ``SKIP LOCKED``, so the sweeps of several workers take different rows.
docs/decisions/0022-tables-at-scale.md says why.
"""

from __future__ import annotations

import datetime
from typing import Any

import peewee

from .archive import ArchivedMessage
from .storage.models import ProcessedMessage, qualified_name, utcnow

#: Rows per delete, and deletes per table per sweep: a sweep's transactions
#: stay short, and 10,000 rows per sweep (every 2 s) outruns any traffic.
BATCH = 1000
BATCHES = 10


class Retention:
    def __init__(
        self,
        database: Any,
        processed: float,
        archive: float | None,
        batch: int = BATCH,
        batches: int = BATCHES,
    ) -> None:
        self.database = database
        self.rules: list[tuple[type[peewee.Model], peewee.Field, datetime.timedelta]] = [
            (ProcessedMessage, ProcessedMessage.applied_at, datetime.timedelta(seconds=processed))
        ]
        if archive is not None:
            self.rules.append(
                (ArchivedMessage, ArchivedMessage.archived_at, datetime.timedelta(seconds=archive))
            )
        self.batch = batch
        self.batches = batches

    def prune(self) -> dict[str, int]:
        """One sweep's pruning; the rows deleted per table."""
        pruned = {}
        for model, column, kept in self.rules:
            cutoff = utcnow() - kept
            sql = self._delete_sql(model, column)
            deleted = 0
            for _ in range(self.batches):
                with self.database.atomic():
                    count = self.database.execute_sql(sql, (cutoff,)).rowcount
                deleted += count
                if count < self.batch:
                    break
            pruned[model._meta.table_name] = deleted
        return pruned

    def _delete_sql(self, model: type[peewee.Model], column: peewee.Field) -> str:
        table, name, param = qualified_name(model), f'"{column.column_name}"', self.database.param
        oldest = (
            f"SELECT {{key}} FROM {table} WHERE {name} < {param} ORDER BY {name} LIMIT {self.batch}"
        )
        if getattr(self.database, "for_update", False):  # PostgreSQL
            rows = oldest.format(key="ctid") + " FOR UPDATE SKIP LOCKED"
            return f"DELETE FROM {table} WHERE ctid = ANY(ARRAY({rows}))"
        return f"DELETE FROM {table} WHERE rowid IN ({oldest.format(key='rowid')})"
