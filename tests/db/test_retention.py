"""The sweep's pruning (messaging/retention.py): processed-message records and,
only when a retention is set, archived messages, oldest first, a bounded
number of batches per sweep; what is recent stays."""

from __future__ import annotations

import datetime

from cqrs_warehouse.messaging.archive import ArchivedMessage
from cqrs_warehouse.messaging.retention import Retention
from cqrs_warehouse.messaging.storage.models import ProcessedMessage, utcnow
from cqrs_warehouse.runtime import Runtime

HOUR = 3600.0


def _processed(count: int, age: datetime.timedelta, tag: str) -> None:
    ProcessedMessage.insert_many(
        [
            {"listener": "products_view", "message_id": f"{tag}-{i}", "applied_at": utcnow() - age}
            for i in range(count)
        ]
    ).execute()


def _archived(count: int, age: datetime.timedelta, tag: str) -> None:
    ArchivedMessage.insert_many(
        [
            {
                "message_id": f"{tag}-{i}",
                "type": "Warehouse.Events.ProductQuantityIncreased",
                "schema_version": 1,
                "payload": b"\x00",
                "archived_at": utcnow() - age,
            }
            for i in range(count)
        ]
    ).execute()


def _ids(model: type[ProcessedMessage] | type[ArchivedMessage]) -> set[str]:
    return {row.message_id for row in model.select(model.message_id)}


def test_processed_records_older_than_the_retention_go_in_bounded_batches(
    runtime: Runtime,
) -> None:
    with runtime.database.connection_context():
        _processed(7, datetime.timedelta(hours=2), "old")
        _processed(2, datetime.timedelta(minutes=30), "recent")
        _archived(3, datetime.timedelta(days=400), "archived")
        retention = Retention(runtime.database, processed=HOUR, archive=None, batch=3, batches=2)

        # One sweep deletes at most two batches of three, the oldest first
        assert retention.prune() == {"messaging_processed_messages": 6}
        assert len(_ids(ProcessedMessage)) == 3
        # The next one the rest; the recent records and the archive stay
        assert retention.prune() == {"messaging_processed_messages": 1}
        assert _ids(ProcessedMessage) == {"recent-0", "recent-1"}
        assert retention.prune() == {"messaging_processed_messages": 0}
        assert len(_ids(ArchivedMessage)) == 3


def test_the_archive_is_pruned_only_with_a_retention(runtime: Runtime) -> None:
    with runtime.database.connection_context():
        _archived(4, datetime.timedelta(days=40), "old")
        _archived(2, datetime.timedelta(days=1), "recent")
        retention = Retention(runtime.database, processed=HOUR, archive=30 * 24 * HOUR)

        assert retention.prune() == {
            "messaging_processed_messages": 0,
            "messaging_archive": 4,
        }
        assert _ids(ArchivedMessage) == {"recent-0", "recent-1"}
